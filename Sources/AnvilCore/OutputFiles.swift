import Foundation
import Synchronization

/// Every file a command writes goes through here: all of a command's files or none,
/// never a half-written file under the target's name, nothing left behind.
///
/// - A regular target (or a new one) is written to a unique temporary file next to it
///   (`mkstemp`), then renamed over it once every file of the command is written. The
///   temporary files are removed when a write fails and when SIGINT or SIGTERM arrives
///   meanwhile.
/// - A target that exists and is not a regular file is never replaced: a character device
///   or a FIFO (`/dev/null`, `/dev/stdout`, a named pipe) is written through; a folder or
///   anything else is refused.
/// - Two targets that name one file (the same path, or different paths to it) are refused.
/// - Failures say why: no permission, no such folder, disk full.
public enum OutputFiles {
    /// Writes `files` as described above.
    public static func write(_ files: [(path: String, bytes: [UInt8])]) throws {
        var seen: [String: String] = [:]
        for f in files where !isWrittenThrough(f.path) {
            let key = resolved(f.path)
            if let other = seen[key] {
                throw AnvilError.io(path: f.path, reason: other == f.path ? "is written twice by this command" : "is the same file as \(other), also written by this command")
            }
            seen[key] = f.path
        }
        var pending: [(temp: String, target: String)] = []
        defer { for p in pending where !p.temp.isEmpty { unlink(p.temp); TemporaryFiles.forget(p.temp) } }
        var throughWrites: [(path: String, bytes: [UInt8])] = []
        for f in files {
            if isWrittenThrough(f.path) { throughWrites.append(f); continue }
            var info = stat()
            if lstat(f.path, &info) == 0 {
                switch info.st_mode & S_IFMT {
                case S_IFREG: break
                case S_IFLNK: break  // a link to a regular file is replaced by the file, as a rename does
                case S_IFDIR: throw AnvilError.io(path: f.path, reason: "is a folder; give a file name")
                default: throw AnvilError.io(path: f.path, reason: "is not a regular file; refusing to replace it")
                }
            }
            let temp = try temporaryFile(next: f.path)
            pending.append((temp.path, f.path))
            defer { close(temp.descriptor) }
            try writeAll(f.bytes, to: temp.descriptor, path: f.path)
            // On disk before the rename makes it the target: a crash leaves the old file or the new one.
            guard fsync(temp.descriptor) == 0 else { throw AnvilError.io(path: f.path, reason: "cannot be written (\(reason(errno)))") }
        }
        for f in throughWrites {
            // The process's own stdout and stderr are written on their descriptors, so what the
            // command prints afterwards follows instead of overwriting (a redirected file).
            if let standard = ["/dev/stdout": Int32(1), "/proc/self/fd/1": 1, "/dev/stderr": 2, "/proc/self/fd/2": 2][f.path] {
                fflush(nil)
                try writeAll(f.bytes, to: standard, path: f.path)
                continue
            }
            let fd = open(f.path, O_WRONLY)
            guard fd >= 0 else { throw AnvilError.io(path: f.path, reason: "cannot be opened for writing (\(reason(errno)))") }
            defer { close(fd) }
            try writeAll(f.bytes, to: fd, path: f.path)
        }
        for (i, p) in pending.enumerated() {
            guard rename(p.temp, p.target) == 0 else {
                throw AnvilError.io(path: p.target, reason: "cannot be created (\(reason(errno)))\(i > 0 ? "; \(pending[..<i].map(\.target).joined(separator: ", ")) already written" : "")")
            }
            TemporaryFiles.forget(p.temp)
            pending[i].temp = ""
        }
        pending.removeAll()
    }

    /// Whether a target is written through rather than replaced: an existing device or FIFO,
    /// or a path under /dev or /proc (/dev/stdout is a link to /proc/self/fd/1, which may be
    /// a redirected regular file: a temporary file in /dev renamed over the link would lose
    /// the output).
    static func isWrittenThrough(_ path: String) -> Bool {
        if path.hasPrefix("/dev/") || path.hasPrefix("/proc/") { return FileManager.default.fileExists(atPath: path) }
        var info = stat()
        guard stat(path, &info) == 0 else { return false }
        return [S_IFCHR, S_IFIFO].contains(info.st_mode & S_IFMT)
    }

    /// A path's identity for comparisons: the real path of its folder and its name.
    public static func resolved(_ path: String) -> String {
        if let real = realpath(path, nil) { defer { free(real) }; return String(cString: real) }
        let url = URL(fileURLWithPath: path)
        let folder = url.deletingLastPathComponent().path
        guard let real = realpath(folder, nil) else { return url.standardizedFileURL.path }
        defer { free(real) }
        return String(cString: real) + "/" + url.lastPathComponent
    }

    /// Throws when an output path names the same file as an input or as another output.
    /// `outputs` and `inputs` pair each path with the flag that gave it, for the message.
    public static func requireDistinct(outputs: [(flag: String, path: String)], inputs: [(flag: String, path: String)]) throws {
        let inputKeys = inputs.map { ($0.flag, resolved($0.path)) }
        var seen: [(String, String)] = []
        for o in outputs where !isWrittenThrough(o.path) {
            let key = resolved(o.path)
            if let i = inputKeys.first(where: { $0.1 == key }) {
                throw AnvilError.invalidArgument("\(o.flag) \(o.path) is the same file as \(i.0) (an input): refusing to overwrite it")
            }
            if let other = seen.first(where: { $0.1 == key }) {
                throw AnvilError.invalidArgument("\(o.flag) \(o.path) is the same file as \(other.0): give each output its own file")
            }
            seen.append((o.flag, key))
        }
    }

    static func reason(_ code: Int32) -> String {
        switch code {
        case ENOSPC: "disk full"
        case EACCES, EPERM: "permission denied"
        case ENOENT: "no such folder"
        case EROFS: "read-only file system"
        default: String(cString: strerror(code))
        }
    }

    static func temporaryFile(next path: String) throws -> (path: String, descriptor: Int32) {
        let url = URL(fileURLWithPath: path)
        let folder = url.deletingLastPathComponent().path
        var template = Array("\(folder)/.\(url.lastPathComponent).anvil-XXXXXX".utf8CString)
        TemporaryFiles.installHandlers()
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw AnvilError.io(path: path, reason: "cannot be written (\(reason(errno)))") }
        let temp = String(cString: template)
        TemporaryFiles.remember(temp)
        fchmod(fd, 0o644 & ~processUmask)
        return (temp, fd)
    }

    static func writeAll(_ bytes: [UInt8], to fd: Int32, path: String) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress! + offset, min(bytes.count - offset, 1 << 30)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw AnvilError.io(path: path, reason: "cannot be written (\(reason(n < 0 ? errno : ENOSPC)))") }
            offset += n
        }
    }

    /// The process's umask, read once (reading it means setting it for a moment).
    static let processUmask: mode_t = {
        let mask = umask(0o022)
        umask(mask)
        return mask
    }()
}

/// Temporary files being written, removed if SIGINT or SIGTERM ends the process first.
/// The handler only calls unlink (async-signal-safe) on C strings kept for it.
enum TemporaryFiles {
    private static let capacity = 64
    nonisolated(unsafe) private static let slots = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: capacity)
    private static let lock = Mutex<Bool>(false)

    static func installHandlers() {
        lock.withLock { installed in
            guard !installed else { return }
            installed = true
            slots.initialize(repeating: nil, count: capacity)
            for signal in [SIGINT, SIGTERM] {
                // A signal the process was told to ignore (nohup, a parent's SIG_IGN) stays ignored.
                var previous = sigaction()
                sigaction(signal, nil, &previous)
                if let handler = previous.__sigaction_handler.sa_handler,
                   unsafeBitCast(handler, to: Int.self) == unsafeBitCast(SIG_IGN, to: Int.self) { continue }
                var action = sigaction()
                action.__sigaction_handler.sa_handler = { code in
                    for i in 0..<TemporaryFiles.capacity { if let p = TemporaryFiles.slots[i] { unlink(p) } }
                    Foundation.signal(code, SIG_DFL)
                    raise(code)
                }
                sigemptyset(&action.sa_mask)
                sigaction(signal, &action, nil)
            }
        }
    }

    static func remember(_ path: String) {
        lock.withLock { _ in
            for i in 0..<capacity where slots[i] == nil {
                slots[i] = strdup(path)
                return
            }
        }
    }

    static func forget(_ path: String) {
        guard !path.isEmpty else { return }
        lock.withLock { _ in
            for i in 0..<capacity {
                if let p = slots[i], String(cString: p) == path {
                    slots[i] = nil
                    free(p)
                }
            }
        }
    }
}
