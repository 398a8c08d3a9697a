import CredentialCore
import Foundation
import Testing

/// Claims of README.md and docs/contract.md held to what the code and the unit do (issue 26).
@Suite struct DocsClaimTests {
    /// The repository's root, from this file's path.
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static func text(_ path: String) throws -> String {
        try String(contentsOf: root.appendingPathComponent(path), encoding: .utf8)
    }
    static let userDocs = ["README.md", "docs/contract.md"]

    /// The row of the files table for `name` in `document`.
    static func row(_ name: String, in document: String) -> String? {
        document.split(separator: "\n").first { $0.hasPrefix("| `\(name)` |") }.map(String.init)
    }

    @Test func restartIsWhatTheUnitSays() throws {
        let unit = try Self.text("scripts/credfs.service")
        let values = unit.split(separator: "\n").filter { $0.hasPrefix("Restart=") }
        #expect(values.count == 1)
        let readme = try Self.text("README.md")
        let said = readme.matches(of: /`(Restart=[a-z-]+)`/).map { String($0.output.1) }
        #expect(!said.isEmpty)
        for claim in said { #expect(claim == values.first.map(String.init), "README says \(claim)") }
    }

    @Test func configJSONModeIsWhatIsRendered() throws {
        let pair = Credentials(
            accessKeyId: "LTAI5tAbCdEfGhIjKlMn", accessKeySecret: "s3cr3t-value", securityToken: nil, expiration: nil)
        let sts = Credentials(
            accessKeyId: "STS.NAbCdEfGhIjKlMn", accessKeySecret: "s3cr3t-value", securityToken: "token-value",
            expiration: Date(timeIntervalSince1970: 2_000_000_000))
        for (credentials, mode) in [(pair, "AK"), (sts, "StsToken")] {
            let json = String(decoding: CredentialViews(credentials).configJSON, as: UTF8.self)
            #expect(json.contains("\"mode\":\"\(mode)\""))
        }
        for document in Self.userDocs {
            let row = try #require(Self.row("config.json", in: try Self.text(document)), "\(document)")
            #expect(row.contains("`StsToken`") && row.contains("`AK` for an AccessKey pair"), "\(document): \(row)")
        }
    }

    /// `--uid`, `--gid` and `--mode` apply to every secret file the code marks secret, and
    /// the docs name them all.
    @Test func theSecretFilesAreNamedInFull() throws {
        let secret = CredentialView.allCases.filter(\.isSecret).map(\.rawValue)
        #expect(secret == ["credentials", "access_key_id", "access_key_secret", "token", "env", "config.json"])
        let readme = try Self.text("README.md")
        let uidRow = try #require(readme.split(separator: "\n").first { $0.hasPrefix("| `uid=`, `gid=` |") })
        for name in secret { #expect(uidRow.contains("`\(name)`"), "README uid= row lacks \(name)") }
        for document in Self.userDocs {
            let text = try Self.text(document)
            for name in secret {
                #expect(Self.row(name, in: text)?.hasPrefix("| `\(name)` | 0400 |") == true, "\(document): \(name)")
            }
            #expect(text.contains("The six secret files (`credentials`, `access_key_id`,"), "\(document)")
            #expect(text.contains("always 0555, owned by `--uid` and `--gid`"), "\(document)")
        }
    }

    @Test func aPinStartsAtTheFirstSecretFieldRead() throws {
        #expect(!CredentialView.expiration.startsPin)
        #expect(CredentialView.allCases.filter(\.startsPin) == [.accessKeyId, .accessKeySecret, .token])
        for document in Self.userDocs + ["docs/decisions.md"] {
            let text = try Self.text(document).split(whereSeparator: \.isWhitespace).joined(separator: " ")
            #expect(!text.contains("after its first field read"), "\(document)")
            #expect(text.contains("first secret field read"), "\(document)")
        }
    }
}

/// Who owns what (README.md, "Files"): `--uid`, `--gid` and `--mode` reach the six secret
/// files; `status` and `expiration` stay 0444 and the daemon's; the directory stays 0555,
/// owned by `--uid` and `--gid`, whatever `--mode` says.
@Suite(.serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(2)))
struct OwnershipTests {
    @Test(arguments: ["0440", "0400", "0000"])
    func theDirectoryIs0555OwnedByUidAndGid(mode: String) throws {
        let daemon = try Daemon(["--provider", "demo", "--uid", "1234", "--gid", "5678", "--mode", mode])
        defer { daemon.stop() }
        try waitUntil("credentials") { try daemon.generation() == 1 }
        var st = stat()
        #expect(stat(daemon.mountpoint, &st) == 0)
        #expect(st.st_mode & S_IFMT == S_IFDIR)
        #expect(st.st_mode & 0o7777 == 0o555, "directory mode \(String(st.st_mode & 0o7777, radix: 8))")
        #expect(st.st_uid == 1234 && st.st_gid == 5678)
        let secretMode = mode_t(mode, radix: 8) ?? 0
        for view in CredentialView.allCases {
            #expect(stat(daemon.path(view.rawValue), &st) == 0, "\(view.rawValue)")
            if view.isSecret {
                #expect(st.st_mode & 0o7777 == secretMode, "\(view.rawValue)")
                #expect(st.st_uid == 1234 && st.st_gid == 5678, "\(view.rawValue)")
            } else {
                #expect(st.st_mode & 0o7777 == 0o444, "\(view.rawValue)")
                #expect(st.st_uid == getuid() && st.st_gid == getgid(), "\(view.rawValue)")
            }
        }
    }
}
