import CFuse3
import Glibc
import Synchronization

/// The reads and writes of one FUSE session on its `/dev/fuse` descriptor, installed with
/// `fuse_session_custom_io` in every process that serves the connection, so that:
///
/// - the first server records the kernel's `FUSE_INIT` request byte for byte (a successor
///   needs it: libfuse answers EIO to everything before INIT, and the kernel sends INIT
///   only once per connection);
/// - a successor first reads that recorded INIT again and swallows libfuse's reply to it
///   (the kernel already has the first server's answer), and no other worker reads the
///   device before that replay is done;
/// - a server can stop reading without unmounting (a handover), and every worker blocked
///   in a read wakes at once: the descriptor is non-blocking and each worker waits in an
///   epoll instance of its own on it (`EPOLLEXCLUSIVE`: a request wakes one worker, not
///   all sixteen) and on an event descriptor (which wakes them all).
///
/// Every process uses this same io: libfuse drops the splice capabilities when a custom io
/// has no splice functions, so a mix would make the successor's INIT negotiate otherwise.
final class SessionIO: Sendable {
    /// `FUSE_INIT` in `fuse_in_header.opcode`.
    static let initOpcode: UInt32 = 26
    /// `sizeof(struct fuse_in_header)`.
    static let inHeaderSize = 40

    let fd: Int32
    /// Unique in this process: a worker's wait set is made anew for another session, whose
    /// descriptors may reuse the numbers.
    private let session: UInt64
    private static let sessions = Atomic<UInt64>(1)
    /// Readable once the session must stop reading (stop or handover).
    private let stopEvent: Int32
    /// Readable once the replayed INIT has been answered (successors only).
    private let initEvent: Int32

    private struct State {
        /// A successor's recorded INIT, delivered by the first read.
        var replay: [UInt8]?
        var replayDelivered = false
        /// `unique` of the replayed INIT: libfuse's reply to it is swallowed.
        var replayUnique: UInt64?
        var initAnswered = true
        /// The first server: record the kernel's INIT when it arrives.
        var capture: Bool
        var stopping = false
    }
    private let state: Mutex<State>
    /// Called once with the kernel's INIT request (first server only), from a reader thread.
    private let onInit: @Sendable ([UInt8]) -> Void

    /// - Parameters:
    ///   - replay: a successor's recorded INIT request; nil for the server that mounted.
    ///   - onInit: the first server's hook for the INIT request it read.
    init(fd: Int32, replay: [UInt8]?, onInit: @escaping @Sendable ([UInt8]) -> Void = { _ in }) throws {
        let stopEvent = credfs_eventfd()
        let initEvent = credfs_eventfd()
        guard stopEvent >= 0, initEvent >= 0 else {
            if stopEvent >= 0 { close(stopEvent) }
            if initEvent >= 0 { close(initEvent) }
            throw FuseError(description: "eventfd: \(String(cString: strerror(errno)))")
        }
        guard credfs_set_nonblock(fd) == 0 else {
            close(stopEvent)
            close(initEvent)
            throw FuseError(description: "cannot make the FUSE descriptor non-blocking")
        }
        self.fd = fd
        session = Self.sessions.wrappingAdd(1, ordering: .relaxed).oldValue
        self.stopEvent = stopEvent
        self.initEvent = initEvent
        self.onInit = onInit
        var initial = State(capture: replay == nil)
        if let replay {
            guard replay.count >= Self.inHeaderSize, Self.opcode(of: replay) == Self.initOpcode else {
                close(stopEvent)
                close(initEvent)
                throw FuseError(description: "the recorded FUSE INIT request is not an INIT")
            }
            initial.replay = replay
            initial.replayUnique = Self.unique(of: replay)
            initial.initAnswered = false
        }
        state = Mutex(initial)
    }

    deinit {
        close(stopEvent)
        close(initEvent)
    }

    /// Makes every read return ENODEV from now on (libfuse then ends its loop cleanly) and
    /// wakes the readers waiting for a request. Requests already read are still answered.
    func stop() {
        state.withLock { $0.stopping = true }
        Self.signal(stopEvent)
    }

    // MARK: the io functions

    private enum Step {
        case deliver([UInt8])
        case waitForInit
        case device
        case stopped
    }

    func read(into buffer: UnsafeMutableRawPointer, capacity: Int) -> Int {
        while true {
            let step = state.withLock { state -> Step in
                if state.stopping { return .stopped }
                if let replay = state.replay, !state.replayDelivered {
                    state.replayDelivered = true
                    return .deliver(replay)
                }
                return state.initAnswered ? .device : .waitForInit
            }
            switch step {
            case .stopped:
                errno = ENODEV
                return -1
            case .deliver(let bytes):
                guard bytes.count <= capacity else {
                    errno = EIO
                    return -1
                }
                bytes.withUnsafeBytes { source in
                    if let base = source.baseAddress { buffer.copyMemory(from: base, byteCount: source.count) }
                }
                return bytes.count
            case .waitForInit:
                // Until libfuse has taken the replayed INIT, a request read now would be
                // answered EIO: wait (the reply wakes us, or a stop).
                _ = Self.wait([initEvent, stopEvent])
            case .device:
                switch credfs_wait_request(fd, stopEvent, session) {
                case 2: continue
                case 1: break
                default:
                    if Self.wait([fd, stopEvent]).contains(stopEvent) { continue }
                }
                let n = Glibc.read(fd, buffer, capacity)
                if n < 0 {
                    let error = errno
                    // Another worker took the request, or a signal: wait again.
                    if error == EAGAIN || error == EINTR { continue }
                    errno = error
                    return -1
                }
                if n >= Self.inHeaderSize {
                    capture(UnsafeRawBufferPointer(start: buffer, count: n))
                }
                return n
            }
        }
    }

    func writev(_ iov: UnsafeMutablePointer<iovec>, count: Int32) -> Int {
        let swallowed = state.withLock { state -> Bool in
            guard !state.initAnswered, let unique = state.replayUnique, count > 0,
                iov[0].iov_len >= 16, let header = iov[0].iov_base
            else { return false }
            guard header.loadUnaligned(fromByteOffset: 8, as: UInt64.self) == unique else { return false }
            state.initAnswered = true
            return true
        }
        if swallowed {
            // The kernel already has the first server's answer to this INIT.
            Self.signal(initEvent)
            var total = 0
            for i in 0..<Int(max(count, 0)) { total += iov[i].iov_len }
            return total
        }
        return Glibc.writev(fd, iov, count)
    }

    private func capture(_ request: UnsafeRawBufferPointer) {
        guard Self.opcode(of: request) == Self.initOpcode else {
            // Only the very first request can be INIT: stop looking after it.
            state.withLock { $0.capture = false }
            return
        }
        let wanted = state.withLock { state -> Bool in
            defer { state.capture = false }
            return state.capture
        }
        if wanted { onInit(Array(request)) }
    }

    // MARK: helpers

    static func opcode<C: Collection<UInt8>>(of request: C) -> UInt32 {
        var value: UInt32 = 0
        for (i, byte) in request.dropFirst(4).prefix(4).enumerated() { value |= UInt32(byte) << (8 * UInt32(i)) }
        return value
    }

    static func unique<C: Collection<UInt8>>(of request: C) -> UInt64 {
        var value: UInt64 = 0
        for (i, byte) in request.dropFirst(8).prefix(8).enumerated() { value |= UInt64(byte) << (8 * UInt64(i)) }
        return value
    }

    private static func signal(_ event: Int32) {
        var one: UInt64 = 1
        _ = Glibc.write(event, &one, 8)
    }

    /// Waits until one of `fds` is readable (or in error); returns those that are.
    private static func wait(_ fds: [Int32]) -> [Int32] {
        var polls = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
        while true {
            let n = poll(&polls, nfds_t(polls.count), -1)
            if n > 0 { return polls.filter { $0.revents != 0 }.map(\.fd) }
            if n < 0, errno != EINTR { return fds }
        }
    }

    // MARK: the C table

    /// libfuse passes the session's userdata: the ``FuseFileSystem``.
    static func io(_ userdata: UnsafeMutableRawPointer?) -> SessionIO? {
        guard let userdata else { return nil }
        return Unmanaged<FuseFileSystem>.fromOpaque(userdata).takeUnretainedValue().sessionIO
    }

    static let table: fuse_custom_io = {
        var io = fuse_custom_io()
        io.read = { _, buffer, capacity, userdata in
            // libfuse cancels its workers when the loop ends; never inside Swift code.
            let old = credfs_disable_cancel()
            defer { credfs_restore_cancel(old) }
            guard let buffer, let io = SessionIO.io(userdata) else {
                errno = ENODEV
                return -1
            }
            return io.read(into: buffer, capacity: capacity)
        }
        io.writev = { fd, iov, count, userdata in
            guard let iov else {
                errno = EINVAL
                return -1
            }
            guard let io = SessionIO.io(userdata) else { return Glibc.writev(fd, iov, count) }
            return io.writev(iov, count: count)
        }
        return io
    }()
}
