import Foundation
import Testing

@testable import CredentialCore

/// Wall time comes from one injected clock: what the configuration builds and what the
/// refresher measures read the clock they were given (a virtual one here, two years
/// behind the real one, so a stray real-clock read would show).
@Suite struct OneClockTests {
    @Test func theProvidersBuiltReadTheClockGiven() async throws {
        let clock = VirtualClock(Fixture.t0)
        var flags = ProviderFlags(provider: .demo)
        flags.demoLifetime = 600
        let demo = try ProviderConfiguration(flags: flags, environment: ProviderEnvironment([:]))
            .makeProvider(clock: clock)
        // Issued at the virtual now, valid for the lifetime asked for.
        #expect(try await demo.fetch().expiration == Fixture.t0.addingTimeInterval(600))

        flags = ProviderFlags(provider: .ramRoleArn)
        flags.roleArn = "acs:ram::1234567890123456:role/one-clock"
        flags.sourceProvider = .demo
        flags.demoLifetime = 600
        let ram = try #require(
            try ProviderConfiguration(flags: flags, environment: ProviderEnvironment([:]))
                .makeProvider(clock: clock) as? RamRoleArnProvider)
        // The source's own refresher runs on the same clock, and so does its demo source.
        #expect(ram.source.clock.now() == Fixture.t0)
        let signer = try await ram.signingCredentials()
        #expect(signer.expiration == Fixture.t0.addingTimeInterval(600))
    }

    struct DatedProvider: CredentialProvider {
        let name = "dated"
        func fetch() async throws -> Credentials {
            // The cloud's clock is 600 s ahead of the virtual one.
            ServerClockProbe.report(Fixture.t0.addingTimeInterval(600))
            return Fixture.sts(expiration: Fixture.t0.addingTimeInterval(4200))
        }
    }

    @Test func theServerClockProbeReadsTheRefreshersClock() async {
        let clock = VirtualClock(Fixture.t0)
        let refresher = Refresher(provider: DatedProvider(), clock: clock, random: { 0 }, logger: .quiet)
        await refresher.refresh()
        // Server minus local at arrival, plus the half second a Date header truncates.
        #expect(refresher.machine.clockSkew == 600.5)
        #expect(refresher.cloudNow() == Fixture.t0.addingTimeInterval(600.5))
    }

    /// The wall clock is made by the executable and handed down: nothing in the core makes
    /// one (no default parameter can pick it silently).
    @Test func theCoreNeverMakesTheWallClock() throws {
        let core = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Sources/CredentialCore")
        let names = try FileManager.default.contentsOfDirectory(atPath: core.path).filter { $0.hasSuffix(".swift") }
        #expect(names.count > 10)
        let makers = try names.filter {
            try String(contentsOf: core.appendingPathComponent($0), encoding: .utf8).contains("SystemRefreshClock()")
        }
        #expect(makers.isEmpty, "\(makers)")
    }
}
