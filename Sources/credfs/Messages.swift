/// The one line a bad argument prints (docs/contract.md, "Command line").
enum Messages {
    /// ArgumentParser's message on one line: a list it puts one item a line (`Please provide
    /// one of the following:` then `  - auto`, …) is joined onto the first line; any other
    /// line after the first is dropped. nil for an empty message.
    static func oneLine(_ message: String) -> String? {
        let lines = message.split(whereSeparator: \.isNewline).map { line in
            String(line.drop { $0 == " " || $0 == "\t" })
        }
        guard let first = lines.first(where: { !$0.isEmpty }) else { return nil }
        let items = lines.filter { $0.hasPrefix("- ") }.map { String($0.dropFirst(2)) }
        return items.isEmpty ? first : first + " " + items.joined(separator: ", ")
    }
}
