import Foundation
import Testing

@testable import Posix

/// `ResidentPages`: which mappings it may drop, and that dropping them in a live process
/// changes nothing but the resident set.
@Suite struct ResidentPagesTests {
    static let smaps = """
        55f0fb74c000-55f0fbab8000 r--p 00000000 fe:00 16277552                   /usr/local/bin/credfs
        Size:               3504 kB
        Rss:                 652 kB
        Anonymous:             0 kB
        Swap:                  0 kB
        VmFlags: rd mr mw me
        55f0fbab8000-55f0fc7bc000 r-xp 0036b000 fe:00 16277552                   /usr/local/bin/credfs
        Anonymous:             0 kB
        Swap:                  0 kB
        55f0fc7bc000-55f0fc83f000 r--p 0106e000 fe:00 16277552                   /usr/local/bin/credfs
        Anonymous:           524 kB
        Swap:                  0 kB
        55f0fc83f000-55f0fca7a000 rw-p 010f0000 fe:00 16277552                   /usr/local/bin/credfs
        Anonymous:           180 kB
        Swap:                  0 kB
        7f0000000000-7f0000021000 rw-p 00000000 00:00 0
        Anonymous:           132 kB
        Swap:                  0 kB
        7f0000100000-7f0000200000 r--p 00000000 fe:00 99                         /usr/lib/locale/with space (deleted)
        Anonymous:             0 kB
        Swap:                  0 kB
        7f0000300000-7f0000301000 r--p 00000000 fe:00 98                         /usr/lib/x/libswapped.so
        Anonymous:             0 kB
        Swap:                  4 kB
        7f0000400000-7f0000401000 r--s 00000000 fe:00 97                         /usr/lib/x/shared.bin
        Anonymous:             0 kB
        Swap:                  0 kB
        ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
        Anonymous:             0 kB
        Swap:                  0 kB
        """

    @Test func onlyCleanPrivateReadOnlyFileMappingsAreCandidates() {
        var parser = ResidentPages.Parser()
        for line in Array(Self.smaps.utf8).split(separator: UInt8(ascii: "\n")) { parser.feed(line) }
        let mappings = parser.finish()
        // The vsyscall range does not fit an Int: skipped, not trapped on.
        #expect(mappings.count == 8)
        let candidates = mappings.filter(\.isCandidate)
        #expect(candidates.map(\.perms) == ["r--p", "r-xp", "r--p"])
        #expect(candidates.first?.path == "/usr/local/bin/credfs")
        #expect(candidates.first?.device == "fe:00")
        #expect(candidates.first?.inode == 16_277_552)
        #expect(candidates.last?.path == "/usr/lib/locale/with space (deleted)")
        // The relocated RELRO (anonymous pages), .data (writable), a swapped page, a shared
        // mapping and anonymous memory are never candidates.
        #expect(!mappings.contains { $0.isCandidate && ($0.anonymousKB > 0 || $0.perms.contains("w")) })
    }

    @Test func deviceNumbersAreWrittenAsSmapsWritesThem() {
        #expect(ResidentPages.deviceNumbers(0xfe00) == "fe:00")
        #expect(ResidentPages.deviceNumbers(0x0803) == "08:03")
    }

    /// In this very process: the executable's pages and the pinned libraries' go, then
    /// everything still runs (the code faults back in).
    @Test func releasingInALiveProcessKeepsItWorking() throws {
        func rssFileKB() -> Int {
            let status = readProcFile("/proc/self/status") ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("RssFile:") } ?? ""
            return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
        }
        let before = rssFileKB()
        let released = ResidentPages.releaseCleanFilePages()
        let after = rssFileKB()
        #expect(released > 0)
        #expect(after < before)
        // Code and constants still work after their pages went.
        let json = try JSONEncoder().encode(["a": [1, 2, 3]])
        let back = try JSONDecoder().decode([String: [Int]].self, from: json)
        #expect(back["a"] == [1, 2, 3])
        #expect(ResidentPages.releaseCleanFilePages() > 0)
    }
}
