import ArgumentParser
import CredentialCore
import Foundation
import Logging

/// The sources this build can fetch from.
enum ProviderKind: String, ExpressibleByArgument, CaseIterable {
    case auto, uri, env, demo
}

/// Where credentials come from: shared by `mount` and `get`.
struct ProviderOptions: ParsableArguments {
    @Option(help: "Credential source: \(ProviderKind.allCases.map(\.rawValue).joined(separator: ", ")).")
    var provider: ProviderKind = .auto

    @Option(help: "Credentials URI for --provider uri (default: $ALIBABA_CLOUD_CREDENTIALS_URI).")
    var uri: String?

    @Option(help: "Seconds each demo credential set lives (--provider demo).")
    var demoLifetime: Int = 60

    func validate() throws {
        if let uri { _ = try Self.checkedURI(uri, flag: "--uri") }
        guard demoLifetime >= 2 else { throw ValidationError("--demo-lifetime must be at least 2 seconds") }
        if provider == .uri, resolvedURI == nil {
            throw ValidationError("--provider uri needs --uri or ALIBABA_CLOUD_CREDENTIALS_URI")
        }
        if provider == .uri, let env = ProcessInfo.processInfo.environment["ALIBABA_CLOUD_CREDENTIALS_URI"], uri == nil {
            _ = try Self.checkedURI(env, flag: "ALIBABA_CLOUD_CREDENTIALS_URI")
        }
    }

    var resolvedURI: String? {
        if let uri { return uri }
        let env = ProcessInfo.processInfo.environment["ALIBABA_CLOUD_CREDENTIALS_URI"] ?? ""
        return env.isEmpty ? nil : env
    }

    static func checkedURI(_ text: String, flag: String) throws -> String {
        guard let url = URLComponents(string: text), let scheme = url.scheme?.lowercased(),
            scheme == "http" || scheme == "https", let host = url.host, !host.isEmpty
        else { throw ValidationError("\(flag) must be an http:// or https:// URL") }
        return text
    }

    func makeProvider() -> any CredentialProvider {
        switch provider {
        case .uri: return URIProvider(url: resolvedURI!)
        case .env: return EnvironmentProvider()
        case .demo: return DemoProvider(lifetime: demoLifetime)
        case .auto: return AutoProvider()
        }
    }
}

/// A duration flag: `90`, `90s`, `15m` or `1h`.
struct Seconds: ExpressibleByArgument {
    var value: TimeInterval

    init?(argument: String) {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600]
        var text = argument
        var scale = 1.0
        if let last = text.last, let unit = units[last] {
            scale = unit
            text.removeLast()
        }
        guard let number = Double(text), number.isFinite, number >= 0 else { return nil }
        value = number * scale
    }
}

/// Octal permission bits, `0400` or `440`.
struct Octal: ExpressibleByArgument {
    var value: mode_t
    init?(argument: String) {
        guard let bits = UInt32(argument, radix: 8), bits <= 0o777 else { return nil }
        value = mode_t(bits)
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
