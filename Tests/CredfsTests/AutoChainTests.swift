import Foundation
import Testing

@testable import CredentialCore

/// `auto`: the SDK default-chain order (env, OIDC, ECS metadata, URI) against fakes. Every
/// metadata endpoint is a fake on 127.0.0.1, or the probe is disabled.
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(2)))
struct AutoChainTests {
    @Test func envComesFirst() async throws {
        let f = try await Fixtures.AutoChainFakes()
        let auto = f.auto(f.env.merging(f.oidc) { a, _ in a }.merging(f.uriVariable) { a, _ in a })
        #expect(auto.name == "auto")
        let credentials = try await auto.fetch()
        await f.stop()
        #expect(credentials.accessKeyId == "LTAI5tAutoEnvKey0001")
        #expect(auto.name == "auto:env")
        #expect(f.counts == (0, 0, 0))
    }

    @Test func oidcComesBeforeMetadataAndURI() async throws {
        let f = try await Fixtures.AutoChainFakes()
        let auto = f.auto(f.oidc.merging(f.uriVariable) { a, _ in a })
        let credentials = try await auto.fetch()
        await f.stop()
        #expect(credentials.accessKeyId == FakeCredentialServer.accessKeyId(1))
        #expect(auto.name == "auto:oidc-role-arn")
        #expect(f.counts == (0, 1, 0))
    }

    @Test func metadataComesBeforeURIAndIsKept() async throws {
        let f = try await Fixtures.AutoChainFakes()
        let auto = f.auto(f.uriVariable)
        _ = try await auto.fetch()
        #expect(auto.name == "auto:ecs-ram-role")
        #expect(f.counts == (3, 0, 0))  // PUT token, role lookup, credentials
        // Kept: a failing metadata service is reported as such, the URI is not tried.
        f.ecs.set { $0.chaos = .http500 }
        do {
            _ = try await auto.fetch()
            Issue.record("the failure was hidden")
        } catch let error as CredentialError {
            #expect(error.message.hasPrefix("auto chose ecs-ram-role: "), "\(error.message)")
        }
        await f.stop()
        #expect(f.counts.uri == 0)
    }

    @Test func metadataDisabledGoesToURI() async throws {
        let f = try await Fixtures.AutoChainFakes()
        let auto = f.auto(
            f.uriVariable.merging(["ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true"]) { a, _ in a })
        _ = try await auto.fetch()
        await f.stop()
        #expect(auto.name == "auto:uri")
        #expect(f.counts == (0, 0, 1))
    }

    /// Off ECS the probe is bounded by one metadata timeout (1 s): a metadata address that
    /// accepts and never answers, or refuses (AsyncHTTPClient retries a refused connect
    /// until its connect timeout), costs about 1 s, then the chain moves on.
    @Test func anAbsentMetadataServiceCostsLittle() async throws {
        let f = try await Fixtures.AutoChainFakes()
        f.ecs.set { $0.tokenMode = .hangs }
        let hanging = f.auto(f.uriVariable)
        var started = Date()
        _ = try await hanging.fetch()
        let hangCost = Date().timeIntervalSince(started)
        #expect(hanging.name == "auto:uri")
        // It gives up (1 s timeout) instead of waiting for the hanging service; the time is
        // reported, and bounded only far above the timeout (a loaded machine is slow).
        #expect(hangCost < 10, "probe of a hanging metadata service took \(hangCost) s")
        #expect(f.ecs.read { $0.tokenPuts } == 1)
        #expect(f.ecs.read { $0.roleListGets + $0.credentialGets } == 0)

        let refused = f.auto(f.uriVariable, imds: "http://127.0.0.1:\(unusedLoopbackPort())")
        started = Date()
        _ = try await refused.fetch()
        let refusedCost = Date().timeIntervalSince(started)
        await f.stop()
        #expect(refused.name == "auto:uri")
        #expect(refusedCost < 10, "probe of a refused metadata address took \(refusedCost) s")
        print(
            "auto: metadata probe cost \(String(format: "%.2f", hangCost)) s against a hanging service, "
                + "\(String(format: "%.3f", refusedCost)) s against a refused port")
    }

    @Test func nothingAvailableNamesWhatWasTried() async throws {
        let f = try await Fixtures.AutoChainFakes()
        let auto = f.auto(["ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true"])
        await f.stop()
        do {
            _ = try await auto.fetch()
            Issue.record("found a source")
        } catch let error as CredentialError {
            for name in [
                "env", "oidc-role-arn", "ecs-ram-role (ALIBABA_CLOUD_ECS_METADATA_DISABLED=true)", "uri",
            ] {
                #expect(error.message.contains(name), "\(error.message)")
            }
        }
        #expect(auto.name == "auto")
    }

    @Test func mountNamesTheChoiceInStatusAndLog() async throws {
        let f = try await Fixtures.AutoChainFakes()
        let daemon = try Daemon(
            ["--imds-endpoint", f.ecs.endpoint],
            environment: Fixtures.environment(f.uriVariable))
        defer { daemon.stop() }
        try waitUntil("generation 1") { try daemon.generation() == 1 }
        #expect(try daemon.status()["provider"] as? String == "auto:ecs-ram-role")
        #expect(daemon.log.contains("auto chose a credential source"))
        #expect(daemon.log.contains("ecs-ram-role"))
        f.ecs.rotate()
        daemon.signal(SIGHUP)
        try waitUntil("generation 2") { try daemon.generation() == 2 }
        #expect(daemon.readAsNewGroup("access_key_id") == FakeCredentialServer.accessKeyId(2))
        #expect(f.uri.requests == 0)
    }
}
