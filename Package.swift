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
        // HTTP: Debian's libcurl (OpenSSL, the system trust store); see docs/design.md.
        .systemLibrary(
            name: "CCurl",
            pkgConfig: "libcurl",
            providers: [.apt(["libcurl4-openssl-dev"])]
        ),
        // HMAC-SHA1 for the RPC signature, from the libcrypto libcurl already links.
        .systemLibrary(
            name: "CCrypto",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        .target(
            name: "FuseBridge",
            dependencies: ["CFuse3"]
        ),
        .target(
            name: "CredentialCore",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
                "CCurl",
                "CCrypto",
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
                "CFuse3",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "CredentialCoreTests",
            dependencies: ["CredentialCore"]
        ),
        .testTarget(
            name: "CredfsTests",
            dependencies: [
                "credfs",
                "CredentialCore",
                "CFuse3",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
    ]
)
