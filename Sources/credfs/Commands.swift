import ArgumentParser
import CredentialCore
import FoundationEssentials
import FuseBridge
import Glibc
import Posix

struct Unmount: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unmount",
        abstract: "Unmount credfs; its daemon then exits.")

    @Argument(help: "The mount point.")
    var mountpoint: String = "/mnt/.alibabacloud"

    func run() async throws {
        let path = MountPoint.resolve(mountpoint)
        guard MountPoint.mountType(at: path) == "fuse.credfs" else {
            throw Failure(message: "no credfs mount at \(path)")
        }
        guard FuseFileSystem.detach(path) else {
            throw Failure(message: "cannot unmount \(path): \(Errno.last)")
        }
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Print the status of a mount; exit 0 when it is fresh or refreshing, 1 otherwise.")

    @Argument(help: "The mount point.")
    var mountpoint: String = "/mnt/.alibabacloud"

    func run() async throws {
        let data: [UInt8]
        do {
            data = try SmallFile.read(MountPoint.resolve(mountpoint) + "/status", what: "status file")
        } catch {
            throw Failure(message: "\(error)")
        }
        Output.standardOutput(data)
        struct State: Decodable { var state: String }
        let state = (try? JSONDecoder().decode(State.self, from: Data(data)))?.state
        guard state == "fresh" || state == "refreshing" else {
            // The status printed says why; this line says what exit 1 means.
            throw Failure(message: "the mount is \(state ?? "in no state credfs knows"), not fresh or refreshing")
        }
    }
}

struct Get: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "get",
        abstract: "Fetch credentials once and print them (no mount).")

    /// `--field`: one of the mount's files, those that hold credentials alone (the
    /// credentials file and the one-field files), named as the mount names them.
    struct Field: ExpressibleByArgument {
        let view: CredentialView
        static let views = CredentialView.allCases.filter { $0 == .credentials || $0.isField }

        init?(argument: String) {
            guard let view = CredentialView(rawValue: argument), Self.views.contains(view) else { return nil }
            self.view = view
        }

        static var allValueStrings: [String] { views.map(\.rawValue) }
    }

    enum Format: String, ExpressibleByArgument, CaseIterable {
        case json, env, process
    }

    @OptionGroup var source: ProviderOptions

    @Option(help: "Print one field: \(Field.allValueStrings.joined(separator: ", ")).")
    var field: Field?

    @Option(
        help:
            "json (the credentials file), env (shell exports) or process (aliyun CLI External); default json. Not with --field."
    )
    var format: Format?

    func validate() throws {
        if field != nil, format != nil {
            throw ValidationError("--field prints one field as it is: it takes no --format")
        }
    }

    func run() async throws {
        let credentials: Credentials
        do {
            credentials = try await source.makeProvider(clock: SystemRefreshClock()).fetch()
        } catch {
            throw Failure(message: "\(error)")
        }
        let views = CredentialViews(credentials)
        let bytes: [UInt8]?
        if let field {
            bytes = views.bytes(of: field.view)
        } else {
            switch format ?? .json {
            case .json: bytes = views.credentials
            case .env: bytes = Render.envFile(credentials)
            case .process: bytes = Render.processOutput(credentials)
            }
        }
        guard let bytes else {
            throw Failure(message: "the credentials have no \(field?.view.rawValue ?? "such field")")
        }
        Output.standardOutput(bytes)
    }
}
