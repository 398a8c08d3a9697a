import Foundation
import Testing

/// What one chaos run measured.
struct ChaosMeasurement {
    var chaos: Chaos
    /// From SIGHUP to the failure showing in `status`.
    var secondsToFailure: TimeInterval
    /// From the fake healing to the next generation being served.
    var secondsToRecovery: TimeInterval
    var failuresBeforeHeal: Int
}

/// Runs every fault of the chaos matrix against a live mount whose source is a fake:
/// for each, forces a refresh into the fault and checks that nothing invalid is served,
/// the last good credentials stay byte for byte, the error names the fault and holds no
/// secret, reads do not wait on the hung upstream, and the mount recovers within one
/// backoff period once the fake heals.
func runChaosMatrix(
    daemon: Daemon, cases: [Chaos] = Chaos.allCases, hangBound: TimeInterval,
    setChaos: (Chaos?) -> Void, rotate: () -> Void
) throws -> [ChaosMeasurement] {
    var generation = try daemon.generation()
    var good = try #require(daemon.read("credentials").bytes)
    var measured: [ChaosMeasurement] = []
    for chaos in cases {
        #expect(try daemon.status()["consecutiveFailures"] as? Int == 0)
        setChaos(chaos)
        let started = Date()
        daemon.signal(SIGHUP)
        if chaos == .hang {
            try waitUntil("the hung refresh to start") { try daemon.state() == "refreshing" }
            let readStarted = Date()
            #expect(daemon.read("credentials").bytes == good, "\(chaos): read during the hang")
            // The read did not wait on the network: it came back while the hung request was
            // still outstanding (no failure counted yet), not once it timed out.
            let after = try daemon.status()
            #expect(
                after["state"] as? String == "refreshing" && after["consecutiveFailures"] as? Int == 0,
                "a read waited on the hung upstream: \(Date().timeIntervalSince(readStarted)) s, then \(after)")
        }
        try waitUntil("a failed refresh under \(chaos)", timeout: 15) {
            (try daemon.status()["consecutiveFailures"] as? Int ?? 0) >= 1
        }
        let toFailure = Date().timeIntervalSince(started)
        let status = try daemon.status()
        let lastError = status["lastError"] as? String ?? ""
        print("chaos \(chaos.rawValue): lastError \(lastError)")
        #expect(
            chaos.expectedError.contains { lastError.contains($0) }, "\(chaos): lastError \(lastError)")
        #expect(
            !lastError.contains("secret-") && !lastError.contains("token-")
                && !lastError.contains("imds-token"))
        #expect(
            ["stale", "refreshing"].contains(status["state"] as? String ?? ""), "\(chaos): \(status)")
        #expect(status["generation"] as? Int == generation)
        // Static stability: the last good set, unchanged, from every view.
        #expect(daemon.read("credentials").bytes == good, "\(chaos): credentials changed")
        #expect(daemon.readAsNewGroup("access_key_id") == FakeCredentialServer.accessKeyId(generation))
        #expect(daemon.readAsNewGroup("token") == FakeCredentialServer.token(generation))
        if chaos == .hang { #expect(toFailure < hangBound, "hang detected after \(toFailure) s") }

        let failures = try daemon.status()["consecutiveFailures"] as? Int ?? 1
        setChaos(nil)
        rotate()
        let healed = Date()
        // One backoff period: the ceiling after `failures` (one more may land meanwhile).
        let ceiling = min(60, pow(2, Double(failures)))
        // The backoff's bound is the refresh machine's (tested with an injected clock); here
        // the recovery time is reported, and waited for well past it (a loaded machine is slow).
        try waitUntil("recovery after \(chaos)", timeout: ceiling + 30) {
            try daemon.generation() == generation + 1
        }
        let toRecovery = Date().timeIntervalSince(healed)
        generation += 1
        good = try #require(daemon.read("credentials").bytes)
        #expect(daemon.readAsNewGroup("access_key_id") == FakeCredentialServer.accessKeyId(generation))
        try waitUntil("fresh after \(chaos)") { try daemon.state() == "fresh" }
        measured.append(
            ChaosMeasurement(
                chaos: chaos, secondsToFailure: toFailure, secondsToRecovery: toRecovery,
                failuresBeforeHeal: failures))
    }
    for m in measured {
        print(
            "chaos \(m.chaos.rawValue): failed after \(String(format: "%.2f", m.secondsToFailure)) s, "
                + "recovered \(String(format: "%.2f", m.secondsToRecovery)) s after healing "
                + "(\(m.failuresBeforeHeal) failure(s) before)")
    }
    return measured
}

/// A fake's state with a chaos switch (every ``FakeUpstream`` but FakeCredentialServer).
protocol ChaosState: RotatingState {
    var chaos: Chaos? { get set }
}

/// The whole matrix against a mount of `fake`: waits for its first generation, runs every
/// fault, and expects a measurement for each.
@discardableResult
func runChaosMatrix<Fake: FakeUpstream>(daemon: Daemon, fake: Fake, hangBound: TimeInterval) throws
    -> [ChaosMeasurement] where Fake.State: ChaosState
{
    try waitUntil("generation 1") { try daemon.generation() == 1 }
    let measured = try runChaosMatrix(
        daemon: daemon, hangBound: hangBound, setChaos: { chaos in fake.set { $0.chaos = chaos } },
        rotate: { fake.rotate() })
    #expect(measured.count == Chaos.allCases.count)
    return measured
}
