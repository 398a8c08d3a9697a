import FoundationEssentials

/// A provider's cheap cached state as a plain value (``CredentialProvider/cachedState``):
/// which provider wrote it, and a few named strings only that provider reads. Small by
/// construction; may hold secrets (a metadata token): memory only, never logged.
public struct ProviderCachedState: Sendable, Equatable, Codable {
    /// The provider that wrote it; any other ignores it.
    public var provider: String
    public var values: [String: String]

    public init(provider: String, values: [String: String]) {
        self.provider = provider
        self.values = values
    }
}

extension AutoProvider {
    /// The source `auto` kept (so a successor does not walk the chain again, which off ECS
    /// costs a metadata probe), and the metadata provider's own cached state.
    public var cachedState: ProviderCachedState? {
        var values: [String: String] = [:]
        if let kept = choice { values["source"] = kept.name }
        for (key, value) in ecs?.cachedState?.values ?? [:] { values["ecs." + key] = value }
        return values.isEmpty ? nil : ProviderCachedState(provider: "auto", values: values)
    }

    public func restoreCachedState(_ state: ProviderCachedState) {
        guard state.provider == "auto" else { return }
        if let ecs {
            var nested: [String: String] = [:]
            for (key, value) in state.values where key.hasPrefix("ecs.") { nested[String(key.dropFirst(4))] = value }
            if !nested.isEmpty { ecs.restoreCachedState(ProviderCachedState(provider: ecs.name, values: nested)) }
        }
        // Only the sources chosen by a probe are worth keeping: env and OIDC are chosen by
        // their variables, which a successor reads the same.
        switch state.values["source"] {
        case let source? where ecs?.name == source: ecs.map { keep($0) }
        case let source? where uri?.name == source: uri.map { keep($0) }
        default: break
        }
    }
}
