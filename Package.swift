// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "credfs",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "credfs", targets: ["credfs"])
    ],
    dependencies: [
        // Exact versions: Package.resolved is not committed here, so these are the pins.
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", exact: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", exact: "2.101.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", exact: "2.13.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CFuse3",
            pkgConfig: "fuse3",
            providers: [.apt(["libfuse3-dev"])]
        ),
        // HTTP: Debian's libcurl (OpenSSL, the system trust store), and HMAC-SHA1 for the RPC
        // signature from the libcrypto it uses; both loaded with dlopen on first use (headers
        // from libcurl4-openssl-dev and libssl-dev). See docs/design.md.
        .target(name: "CCurl"),
        .systemLibrary(name: "CPosix"),
        .target(name: "Posix", dependencies: ["CPosix"]),
        .target(
            name: "FuseBridge",
            dependencies: ["CFuse3", "Posix"]
        ),
        .target(
            name: "CredentialCore",
            dependencies: [
                "Posix",
                .product(name: "Logging", package: "swift-log"),
                "CCurl",
            ]
        ),
        // `--serve-uri` and `--metrics`: one small HTTP server on SwiftNIO and its two handlers
        // (the only NIO in credfs; the core knows neither NIO nor FUSE).
        .target(
            name: "Listeners",
            dependencies: [
                "CredentialCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "credfs",
            dependencies: [
                "FuseBridge",
                "CredentialCore",
                "Listeners",
                "CFuse3",
                "Posix",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            // The version, from the repository's VERSION file (one place for the binary, the
            // package and the man pages; docs/packaging.md).
            resources: [.embedInCode("VERSION")],
            // The shipping build: lld with packed relative relocations (DT_RELR, glibc >= 2.36)
            // and no dynamic symbol table for the executable: -2.7 MB stripped, -3 MiB RSS
            // (docs/design.md).
            linkerSettings: [
                .unsafeFlags(
                    [
                        "-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs", "-Xlinker",
                        "--no-export-dynamic",
                    ], .when(configuration: .release))
            ]
        ),
        .testTarget(
            name: "FuseBridgeTests",
            dependencies: ["FuseBridge"]
        ),
        .testTarget(
            name: "CredentialCoreTests",
            dependencies: ["CredentialCore"]
        ),
        .testTarget(
            name: "ListenersTests",
            dependencies: ["Listeners", "CredentialCore"]
        ),
        .testTarget(
            name: "CredfsTests",
            dependencies: [
                "credfs",
                "CredentialCore",
                "Listeners",
                "CFuse3",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
    ]
)
