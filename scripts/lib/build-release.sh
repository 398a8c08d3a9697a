# Sourced by scripts/ and bench/: the one spelling of the shipping build (release, static
# Swift stdlib; Package.swift adds lld and packed relocations for release).
#   build_release [PRODUCT]   builds PRODUCT (default credfs) in the current package
#   release_bin_dir           prints the folder the shipping build writes
# After build_release, $credfs_bin is the built credfs (symbolised: strip it to install).
release_flags=(-c release --static-swift-stdlib)

build_release() {
    swift build "${release_flags[@]}" --product "${1:-credfs}" >&2
    credfs_bin=$(release_bin_dir)/credfs
}

release_bin_dir() {
    swift build "${release_flags[@]}" --show-bin-path
}
