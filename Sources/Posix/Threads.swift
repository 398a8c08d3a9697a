import CPosix
import Glibc

/// Starts `body` on a detached thread of its own (never on Swift's cooperative pool), for
/// code that blocks: libfuse's loop, the parking timer. Returns false if none could start.
@discardableResult
public func startThread(name: String, _ body: @escaping @Sendable () -> Void) -> Bool {
    final class Box {
        let name: String
        let body: @Sendable () -> Void
        init(_ name: String, _ body: @escaping @Sendable () -> Void) {
            self.name = name
            self.body = body
        }
    }
    let context = Unmanaged.passRetained(Box(String(name.utf8.prefix(15)) ?? "credfs", body)).toOpaque()
    var thread = pthread_t()
    let started = pthread_create(
        &thread, nil,
        { raw in
            guard let raw else { return nil }
            let box = Unmanaged<Box>.fromOpaque(raw).takeRetainedValue()
            // Named by itself before its body runs, so the threads the body starts (libfuse's
            // workers) inherit the name; named by the creator, they could inherit the
            // creator's name first.
            _ = credfs_set_thread_name(pthread_self(), box.name)
            box.body()
            return nil
        }, context)
    guard started == 0 else {
        Unmanaged<Box>.fromOpaque(context).release()
        return false
    }
    _ = pthread_detach(thread)
    return true
}

/// Names the calling thread (up to 15 bytes); called on the main thread, this is the
/// process's name in `ps`, `pgrep -x` and the kernel's log.
public func nameCurrentThread(_ name: String) {
    _ = credfs_set_thread_name(pthread_self(), String(name.utf8.prefix(15)) ?? "credfs")
}
