// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "credfs",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "credfs", targets: ["credfs"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CFuse3",
            pkgConfig: "fuse3",
            providers: [.apt(["libfuse3-dev"])]
        ),
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
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        .executableTarget(
            name: "credfs",
            dependencies: [
                "FuseBridge",
                "CredentialCore",
                "CFuse3",
                "Posix",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
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
