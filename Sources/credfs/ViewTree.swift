import CredentialCore
import FoundationEssentials
import FuseBridge
import Glibc

/// The mount's directory: one file per ``CredentialView`` (docs/contract.md, "Files"), wired
/// to the view source.
enum ViewTree {
    static func make(
        views: CredentialViewSource, secretMode: mode_t, uid: uid_t, gid: gid_t, mountedAt: Date,
        kernelCache: Bool, clock: any RefreshClock
    ) -> VirtualDirectory {
        let files = CredentialView.allCases.map { view in
            let peek: @Sendable () -> VirtualFile.Content = {
                let content = convert(views.peek(view))
                guard view == .status, kernelCache, case .bytes(let bytes, let mtime, _) = content else {
                    return content
                }
                return .bytes(bytes, mtime: mtime, version: statusVersion(clock.now()))
            }
            return VirtualFile(
                name: view.rawValue,
                permissions: view.isSecret ? secretMode : 0o444,
                uid: view.isSecret ? uid : getuid(),
                gid: view.isSecret ? gid : getgid(),
                // Credential views live in the page cache, one immutable inode per generation.
                // status changes every second: it goes through the daemon, or, when opens
                // never reach the daemon, it is a new version every second that the kernel
                // looks up again after a second.
                caching: view == .status && !kernelCache ? .perOpen : .versioned,
                cacheTimeout: view == .status ? 1 : 86_400,
                peek: peek,
                // A reader held to an older generation finds that generation's own inode, so
                // its bytes never reach the current inode's page cache.
                lookup: view.isField && !kernelCache ? lookup(view, views) : nil,
                open: { caller in
                    // status in kernel-cache mode is versioned by the second, as peek says.
                    if view == .status, kernelCache { return peek() }
                    // Only field reads are pinned: the other views need no process group.
                    return convert(views.open(view, reader: view.isField && !kernelCache ? reader(caller) : nil))
                },
                servedFor: view == .status ? nil : servedFor(views))
        }
        return VirtualDirectory(files: files, permissions: 0o555, uid: uid, gid: gid, mtime: mountedAt)
    }

    /// The kernel keeps a generation's names no longer than it is served: past its
    /// Expiration a lookup asks, and is refused (with --kernel-cache no OPEN would).
    static func servedFor(_ views: CredentialViewSource) -> @Sendable (UInt64) -> Double? {
        { version in views.secondsServed(generation: Int(clamping: version)) }
    }

    /// Field lookups per reader: a pinned group finds its pinned generation.
    static func lookup(_ view: CredentialView, _ views: CredentialViewSource)
        -> @Sendable (Caller) -> VirtualFile.Content
    {
        { caller in convert(views.lookup(view, reader: reader(caller))) }
    }

    /// The reader's process group, as pins know it; nil for a pid this daemon cannot see
    /// (another PID namespace reports 0, and getpgid(0) would name the daemon's own group).
    static func reader(_ caller: Caller) -> GenerationPins.Reader? {
        guard caller.pid > 0 else { return nil }
        let group = getpgid(caller.pid)
        return group > 0 ? GenerationPins.Reader(group: group, uid: caller.uid) : nil
    }

    /// The version of `status` in kernel-cache mode: the current second.
    static func statusVersion(_ now: Date) -> UInt64 {
        let seconds = now.timeIntervalSince1970
        return seconds.isFinite && seconds >= 1 && seconds < 1e15 ? UInt64(seconds) : 1
    }

    static func convert(_ content: ViewContent) -> VirtualFile.Content {
        switch content {
        case .bytes(let bytes, let mtime, let generation):
            return .bytes(bytes, mtime: mtime, version: UInt64(max(generation, 0)))
        case .absent: return .absent
        case .unavailable: return .failure(EIO)
        case .pending(let timeout): return .pending(timeout: timeout)
        }
    }
}
