import FoundationEssentials

extension Render {
    /// The Prometheus text exposition (format 0.0.4) of one status snapshot: every value
    /// comes from `s`, the same snapshot type the `status` file renders, so the two agree.
    /// No secret and no AccessKeyId (not even masked) appear in it.
    ///
    /// - Parameter pinnedGroups: process groups in the field-file pin table.
    public static func metrics(_ s: StatusSnapshot, pinnedGroups: Int) -> [UInt8] {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        }
        func sample(_ name: String, _ labels: [(String, String)] = [], _ value: String) {
            let rendered =
                labels.isEmpty
                ? "" : "{" + labels.map { "\($0.0)=\"\(labelValue($0.1))\"" }.joined(separator: ",") + "}"
            out += "\(name)\(rendered) \(value)\n"
        }
        func seconds(_ date: Date) -> String { number(date.timeIntervalSince1970.rounded(.down)) }

        family("credfs_build_info", "gauge", "The running credfs version (always 1).")
        sample("credfs_build_info", [("version", s.version)], "1")
        family("credfs_state", "gauge", "1 for the current refresh state, 0 for the others.")
        for state in ["pending", "fresh", "refreshing", "stale", "expired"] {
            sample("credfs_state", [("state", state)], s.state.rawValue == state ? "1" : "0")
        }
        family("credfs_generation", "gauge", "Generation of the credentials held (0 before the first).")
        sample("credfs_generation", [], String(s.generation))
        if let expiration = s.expiration {
            family(
                "credfs_credentials_expiry_timestamp_seconds", "gauge",
                "Expiration of the credentials held, Unix seconds.")
            sample("credfs_credentials_expiry_timestamp_seconds", [], seconds(expiration))
        }
        if let remaining = s.secondsRemaining {
            family(
                "credfs_credentials_remaining_seconds", "gauge",
                "Seconds the credentials held stay valid (by the cloud's clock).")
            sample("credfs_credentials_remaining_seconds", [], String(remaining))
        }
        if let last = s.lastRefresh {
            family("credfs_last_refresh_timestamp_seconds", "gauge", "When the last upstream answer arrived.")
            sample("credfs_last_refresh_timestamp_seconds", [], seconds(last))
        }
        family("credfs_refresh_total", "counter", "Finished upstream requests by result.")
        sample("credfs_refresh_total", [("result", "success")], String(s.results.success))
        sample("credfs_refresh_total", [("result", "unchanged")], String(s.results.unchanged))
        sample("credfs_refresh_total", [("result", "failure")], String(s.results.failure))
        family("credfs_consecutive_failures", "gauge", "Failed refreshes in a row.")
        sample("credfs_consecutive_failures", [], String(s.consecutiveFailures))
        family("credfs_upstream_requests_total", "counter", "Upstream requests started (status upstreamRequests).")
        sample("credfs_upstream_requests_total", [("provider", s.provider)], String(s.upstreamRequests))
        family(
            "credfs_upstream_request_duration_seconds", "histogram",
            "Duration of finished upstream requests (one credential fetch, all its HTTP calls).")
        for (index, bound) in DurationHistogram.bounds.enumerated() {
            sample(
                "credfs_upstream_request_duration_seconds_bucket", [("le", number(bound))],
                String(s.durations.cumulative[index]))
        }
        sample("credfs_upstream_request_duration_seconds_bucket", [("le", "+Inf")], String(s.durations.count))
        sample("credfs_upstream_request_duration_seconds_sum", [], number(s.durations.sum))
        sample("credfs_upstream_request_duration_seconds_count", [], String(s.durations.count))
        family("credfs_pinned_groups", "gauge", "Process groups with a pinned field-file generation.")
        sample("credfs_pinned_groups", [], String(pinnedGroups))
        family("credfs_restarts_total", "counter", "Daemon restarts under this mount (takeovers).")
        sample("credfs_restarts_total", [], String(s.serving?.restarts ?? 0))
        if let skew = s.clockSkewSeconds {
            family(
                "credfs_clock_skew_seconds", "gauge",
                "The cloud's clock minus the local clock, from the last upstream Date header.")
            sample("credfs_clock_skew_seconds", [], String(skew))
        }
        family("credfs_mounted_timestamp_seconds", "gauge", "When the mount was made, Unix seconds.")
        sample("credfs_mounted_timestamp_seconds", [], seconds(s.mountedAt))
        return Array(out.utf8)
    }

    /// A label value with `\`, `"` and newlines escaped, as the text format requires.
    static func labelValue(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// A sample value: integers without a fraction, others in Swift's shortest form.
    static func number(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return "\(value)"
    }
}
