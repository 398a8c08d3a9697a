import Foundation
import Synchronization

/// The files credfs shows, by name (SPEC section 1).
public enum CredentialView: String, CaseIterable, Sendable {
    case credentials
    case accessKeyId = "access_key_id"
    case accessKeySecret = "access_key_secret"
    case token
    case expiration
    case status
    case env
    case configJSON = "config.json"

    /// Secret views take `--mode/--uid/--gid`; `expiration` and `status` stay 0444.
    public var isSecret: Bool { self != .expiration && self != .status }

    /// The one-field views, which a reader combines across several opens: these are
    /// pinned to one generation per process group (SPEC section 2 item 4).
    public var isField: Bool { [.accessKeyId, .accessKeySecret, .token, .expiration].contains(self) }
}

/// What a view holds at one instant.
public enum ViewContent: Sendable, Equatable {
    /// `generation` names the credentials the bytes were rendered from (0: none), so equal
    /// generations of one view always hold equal bytes.
    case bytes([UInt8], mtime: Date, generation: Int = 0)
    /// The view does not exist for these credentials (`token` of an AccessKey pair).
    case absent
    /// No valid credentials: readers get EIO.
    case unavailable
}

/// Serves the views from the refresher's cache: renders each generation once, and never
/// touches the network. Knows nothing of FUSE.
public final class CredentialViewSource: Sendable {
    let refresher: Refresher
    let initialWait: TimeInterval
    let mountedAt: Date
    let version: String
    let region: String
    let clock: any RefreshClock
    private let rendered = Mutex<(generation: Int, views: CredentialViews)?>(nil)
    /// Process group → the generation its field reads are pinned to.
    public let pins: GenerationPins

    public init(
        refresher: Refresher, initialWait: TimeInterval, mountedAt: Date, version: String,
        region: String = "cn-hangzhou", clock: any RefreshClock = SystemRefreshClock(),
        pins: GenerationPins = GenerationPins()
    ) {
        self.refresher = refresher
        self.initialWait = initialWait
        self.mountedAt = mountedAt
        self.version = version
        self.region = region
        self.clock = clock
        self.pins = pins
    }

    /// The current content, for `stat` and directory listings: never waits. While no valid
    /// credentials are held the credential views are present and empty (an open then fails).
    public func peek(_ view: CredentialView) -> ViewContent {
        if view == .status { return statusContent() }
        guard let published = refresher.serving() else { return .bytes([], mtime: mountedAt) }
        return content(view, of: published)
    }

    /// The content an open snapshots: waits up to `initialWait` for the very first
    /// credentials; `.unavailable` when none are valid.
    ///
    /// - Parameter group: the reader's process group; field views read by one group within
    ///   ``GenerationPins/window`` of its first field read come from one generation.
    public func open(_ view: CredentialView, group: Int32? = nil) -> ViewContent {
        if view == .status { return statusContent() }
        guard let current = refresher.waitForServing(timeout: initialWait) else { return .unavailable }
        guard view.isField, let group else { return content(view, of: current) }
        return content(view, of: pins.generation(for: group, current: current, now: clock.now()))
    }

    public func status() -> StatusSnapshot {
        refresher.status(mountedAt: mountedAt, version: version)
    }

    func statusContent() -> ViewContent {
        .bytes(Render.statusFile(status()), mtime: Date())
    }

    func content(_ view: CredentialView, of published: Published) -> ViewContent {
        let views = views(of: published)
        let bytes: [UInt8]?
        switch view {
        case .credentials: bytes = views.credentials
        case .accessKeyId: bytes = views.accessKeyId
        case .accessKeySecret: bytes = views.accessKeySecret
        case .token: bytes = views.token
        case .expiration: bytes = views.expiration
        case .env: bytes = views.env
        case .configJSON: bytes = views.configJSON
        case .status: bytes = nil
        }
        return bytes.map { .bytes($0, mtime: published.fetchedAt, generation: published.generation) }
            ?? .absent
    }

    func views(of published: Published) -> CredentialViews {
        rendered.withLock { cache in
            if let cache, cache.generation == published.generation { return cache.views }
            let views = CredentialViews(published.credentials, region: region)
            cache = (published.generation, views)
            return views
        }
    }
}

/// Pins each process group's field reads to the generation of its first field read, for
/// ``window`` seconds (not sliding), while that generation is valid. Bounded: the oldest
/// pin is dropped when full. Costs no upstream request.
public final class GenerationPins: Sendable {
    public let window: TimeInterval
    public let capacity: Int
    private let pins = Mutex<[Int32: (published: Published, pinnedAt: Date)]>([:])

    public init(window: TimeInterval = 10, capacity: Int = 4096) {
        self.window = window
        self.capacity = capacity
    }

    public var count: Int { pins.withLock { $0.count } }

    /// The generation `group` reads now: its pin while fresh and valid, else `current`
    /// (which becomes its new pin).
    public func generation(for group: Int32, current: Published, now: Date) -> Published {
        pins.withLock { pins in
            if let pin = pins[group], now.timeIntervalSince(pin.pinnedAt) < window,
                pin.published.credentials.isValid(at: now)
            {
                return pin.published
            }
            if pins.count >= capacity {
                pins = pins.filter { now.timeIntervalSince($0.value.pinnedAt) < window }
                if pins.count >= capacity,
                    let oldest = pins.min(by: { $0.value.pinnedAt < $1.value.pinnedAt })
                {
                    pins[oldest.key] = nil
                }
            }
            pins[group] = (current, now)
            return current
        }
    }
}
