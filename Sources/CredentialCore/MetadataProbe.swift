import FoundationEssentials

extension HTTPFetcher.Timeouts {
    /// `credfs doctor`'s probe of the metadata service: gives up within 1 s in all.
    public static let probe = HTTPFetcher.Timeouts(connect: .milliseconds(500), read: .milliseconds(500))
}

/// Whether an ECS metadata service answers at `endpoint` (any HTTP answer counts): the
/// question the SDKs' default chain asks before it would look at a credentials URI.
public enum MetadataProbe {
    public static func answers(endpoint: String) async -> Bool {
        let base = endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint
        let http = HTTPFetcher(timeouts: .probe)
        do {
            _ = try await http.send(.GET, url: base + "/latest/meta-data/")
            return true
        } catch {
            return false
        }
    }
}
