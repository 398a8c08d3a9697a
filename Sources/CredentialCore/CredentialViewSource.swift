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

    /// Secret views take `--mode/--uid/--gid`; `expiration` and `status` stay 0444.
    public var isSecret: Bool { self != .expiration && self != .status }
}

/// What a view holds at one instant.
public enum ViewContent: Sendable, Equatable {
    case bytes([UInt8], mtime: Date)
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
    private let rendered = Mutex<(generation: Int, views: CredentialViews)?>(nil)

    public init(refresher: Refresher, initialWait: TimeInterval, mountedAt: Date, version: String) {
        self.refresher = refresher
        self.initialWait = initialWait
        self.mountedAt = mountedAt
        self.version = version
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
    public func open(_ view: CredentialView) -> ViewContent {
        if view == .status { return statusContent() }
        guard let published = refresher.waitForServing(timeout: initialWait) else { return .unavailable }
        return content(view, of: published)
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
        case .status: bytes = nil
        }
        return bytes.map { .bytes($0, mtime: published.fetchedAt) } ?? .absent
    }

    func views(of published: Published) -> CredentialViews {
        rendered.withLock { cache in
            if let cache, cache.generation == published.generation { return cache.views }
            let views = CredentialViews(published.credentials)
            cache = (published.generation, views)
            return views
        }
    }
}
