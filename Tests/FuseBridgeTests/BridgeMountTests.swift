import Foundation
import Synchronization
import Testing

@testable import FuseBridge

/// A real mount of a small tree served by this test process.
@Suite(
    .serialized,
    .enabled(if: geteuid() == 0 && access("/dev/fuse", R_OK | W_OK) == 0, "needs root and /dev/fuse to mount"))
struct BridgeMountTests {
    final class Versioned: Sendable {
        let state = Mutex<(version: UInt64, bytes: [UInt8])>((1, Array("one".utf8)))
        func set(_ version: UInt64, _ text: String) { state.withLock { $0 = (version, Array(text.utf8)) } }
        var content: VirtualFile.Content {
            state.withLock { .bytes($0.bytes, mtime: Date(timeIntervalSince1970: 1_700_000_000), version: $0.version) }
        }
    }

    func mount(_ files: [VirtualFile]) throws -> (FuseFileSystem, String) {
        signal(SIGPIPE, SIG_IGN)
        var template = Array("/tmp/credfs-bridge-XXXXXX".utf8CString)
        let dir = String(cString: mkdtemp(&template)!)
        let fs = FuseFileSystem(tree: VirtualDirectory(files: files, mtime: Date()), mountpoint: dir)
        try fs.mount()
        fs.start()
        return (fs, dir)
    }

    func unmount(_ fs: FuseFileSystem, _ dir: String) async {
        fs.stop(grace: .milliseconds(100))
        await fs.waitUntilStopped()
        rmdir(dir)
    }

    func read(_ path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    /// Drops unused dentries and inodes machine-wide, so the kernel sends its FORGETs.
    func dropKernelCaches() {
        let fd = open("/proc/sys/vm/drop_caches", O_WRONLY)
        guard fd >= 0 else { return }
        _ = write(fd, "2", 1)
        close(fd)
    }

    @Test func versionedInodesAreForgottenOnceTheKernelDropsThem() async throws {
        let file = Versioned()
        let (fs, dir) = try mount([
            VirtualFile(
                name: "data", permissions: 0o444, caching: .versioned, peek: { file.content },
                open: { _ in file.content })
        ])
        for version in 1...5 {
            file.set(UInt64(version), "version \(version)")
            fs.invalidate(["data"])
            #expect(read(dir + "/data") == "version \(version)")
        }
        // Each version was looked up once; invalidated names let the old ones go.
        dropKernelCaches()
        let deadline = Date().addingTimeInterval(10)
        while fs.versionedInodeCount > 0, Date() < deadline { usleep(20_000) }
        #expect(fs.versionedInodeCount == 0, "inodes the kernel forgot are still held")
        #expect(fs.openHandleCount == 0)
        await unmount(fs, dir)
    }

    @Test func readdirFromAnyOffsetListsTheRest() async throws {
        let files = (0..<5).map { i in
            VirtualFile(
                name: "f\(i)", permissions: 0o444, peek: { .bytes([UInt8(i)], mtime: Date()) },
                open: { _ in .bytes([UInt8(i)], mtime: Date()) })
        }
        let (fs, dir) = try mount(files)
        guard let stream = opendir(dir) else {
            Issue.record("opendir failed: errno \(errno)")
            await unmount(fs, dir)
            return
        }
        func names(from offset: Int) -> [String] {
            seekdir(stream, offset)
            var out: [String] = []
            while let entry = readdir(stream) {
                out.append(
                    withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                )
            }
            return out
        }
        #expect(names(from: 0) == [".", "..", "f0", "f1", "f2", "f3", "f4"])
        #expect(names(from: 4) == ["f2", "f3", "f4"])
        #expect(names(from: 7) == [])
        #expect(names(from: 1000) == [])
        closedir(stream)
        // RELEASEDIR is asynchronous.
        let deadline = Date().addingTimeInterval(5)
        while fs.openHandleCount > 0, Date() < deadline { usleep(10_000) }
        #expect(fs.openHandleCount == 0)
        await unmount(fs, dir)
    }
}
