import Glibc

/// What the bridge answers one FUSE request, decided without libfuse
/// (FuseFileSystem+Answers.swift) and sent by ``FuseOps/reply(_:to:)``, the one place that
/// calls `fuse_reply_*`. Tests read answers directly, without a mount.
enum Answer: Sendable {
    /// A name's inode (LOOKUP).
    case entry(EntryAnswer)
    /// An inode's attributes (GETATTR), which the kernel may keep `timeout` seconds.
    case attr(stat, timeout: Double)
    /// An opened file or directory (OPEN, OPENDIR).
    case open(OpenAnswer)
    /// The bytes a READ asked for (maybe none: the end of the file).
    case data(ArraySlice<UInt8>)
    /// Directory entries (READDIR), from the request's offset on: each entry's offset is its
    /// index in the listing, and the next read resumes at index + 1. Empty at the end.
    case directory(ArraySlice<DirectoryEntry>)
    /// The file system's figures (STATFS).
    case statfs(statvfs)
    /// Done, nothing to say (RELEASE, RELEASEDIR): an error reply of 0.
    case success
    /// Failed with this errno.
    case error(Int32)
    /// No reply at all (FORGET).
    case none
    /// Parked: answered later, through the same layer, by a wake or at its deadline.
    case parked
}

/// A LOOKUP's answer.
struct EntryAnswer: Sendable {
    var inode: UInt64
    var attr: stat
    var attrTimeout: Double
    var entryTimeout: Double
    /// One lookup of a versioned inode was counted for it: if the kernel does not take the
    /// reply, the count is given back.
    var counted: Bool
}

/// An OPEN's or OPENDIR's answer.
struct OpenAnswer: Sendable, Equatable {
    /// The handle (0: none, reads go by inode).
    var fh: UInt64
    var directIO: Bool
    var keepCache: Bool
}

/// One name of a listing.
struct DirectoryEntry: Sendable, Equatable {
    let name: String
    let inode: UInt64
    let mode: mode_t

    /// Bytes the entry takes in a READDIR reply: `struct fuse_dirent` (24 bytes and the
    /// name) rounded up to 8, as `fuse_add_direntry` packs it.
    var size: Int { (24 + name.utf8.count + 7) & ~7 }
}
