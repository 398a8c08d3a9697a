import Glibc

/// An errno value as the one line `strerror(3)` gives ("No such file or directory"): the
/// one spelling of a system error in messages.
public enum Errno {
    /// The text of `code`.
    public static func describe(_ code: Int32) -> String { String(cString: strerror(code)) }

    /// The text of the calling thread's `errno`, read now.
    public static var last: String { describe(errno) }
}
