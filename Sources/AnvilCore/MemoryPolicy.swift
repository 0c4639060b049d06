import Foundation
import Synchronization

/// The one limit on memory whose size a model or its inputs decide: a tensor, a folded
/// constant, an activation arena. Every such size is checked against it before it is
/// allocated, and a size above it is an error naming what wanted the memory, how much and
/// the limit, instead of a trap in the allocator.
///
/// The default is three quarters of the machine's physical memory (or of the address-space
/// limit, `ulimit -v`, when lower); the environment
/// variable `ANVIL_MEMORY_LIMIT` and the command line's `--memoryLimit` set it (bytes,
/// with an optional K, M, G or T suffix in powers of 1024).
public enum MemoryPolicy {
    public static let environmentVariable = "ANVIL_MEMORY_LIMIT"

    private static let current = Atomic<Int>(0)

    /// The default limit: ¾ of physical memory, or the environment variable's value (read
    /// once: reading the environment on every check made a 10k-layer build 2× slower).
    public static let defaultLimit: Int = {
        if let text = ProcessInfo.processInfo.environment[environmentVariable] {
            if let value = try? parse(text) { return value }
            FileHandle.standardError.write(Data("warning: \(environmentVariable)='\(text)' is not a size such as 8G, 512M or 1073741824: ignored\n".utf8))
        }
        var physical = ProcessInfo.processInfo.physicalMemory
        // An address-space limit (ulimit -v) bounds what the process can have, too.
        var rlim = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_AS.rawValue), &rlim) == 0, rlim.rlim_cur != rlim_t.max { physical = min(physical, UInt64(rlim.rlim_cur)) }
        return Int(clamping: physical / 4 * 3)
    }()

    /// The limit in bytes now in force.
    public static var limit: Int {
        get {
            let value = current.load(ordering: .relaxed)
            return value > 0 ? value : defaultLimit
        }
        set { current.store(max(1, newValue), ordering: .relaxed) }
    }

    /// Parses "8G", "512M", "1048576" (powers of 1024).
    public static func parse(_ text: String) throws -> Int {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let units: [Character: Int] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var digits = Substring(trimmed), unit = 1
        if let last = trimmed.last?.uppercased().first, let u = units[last] {
            digits = trimmed.dropLast()
            unit = u
        } else if trimmed.uppercased().hasSuffix("B"), let u = units[trimmed.uppercased().dropLast().last ?? " "] {
            digits = trimmed.dropLast(2)
            unit = u
        }
        guard let value = Int(digits), value > 0 else {
            throw AnvilError.invalidArgument("memory limit '\(text)' is not a positive size such as 8G, 512M or 1073741824")
        }
        let (bytes, overflow) = value.multipliedReportingOverflow(by: unit)
        guard !overflow else { throw AnvilError.invalidArgument("memory limit '\(text)' is too large") }
        return bytes
    }

    /// Bytes of `count` elements of `elementSize`, nil on overflow.
    public static func bytes(count: Int, elementSize: Int) -> Int? {
        guard count >= 0 else { return nil }
        let (bytes, overflow) = count.multipliedReportingOverflow(by: max(1, elementSize))
        return overflow ? nil : bytes
    }

    /// Bytes the caller already holds (the layer interpreter's live values, set around each
    /// node it runs): a new allocation must fit beside them.
    @TaskLocal public static var held = 0

    /// Throws when `bytes` (nil: too large to count) exceed the limit, less what is `held`.
    public static func check(_ bytes: Int?, for what: @autoclosure () -> String) throws {
        let limit = self.limit, held = Self.held
        guard let bytes, bytes <= limit - min(held, limit) else {
            throw AnvilError.memoryLimit(what: held > 0 ? "\(what()), beside \(held) bytes of live values" : what(), bytes: bytes, limit: limit)
        }
    }

    /// Bytes of several buffers held at once, as (element count, bytes per element); nil when
    /// the sum would overflow.
    public static func total(_ buffers: [(count: Int, bytes: Int)]) -> Int? {
        var sum = 0
        for (count, bytes) in buffers {
            let (size, o1) = count.multipliedReportingOverflow(by: bytes)
            let (next, o2) = sum.addingReportingOverflow(size)
            if o1 || o2 { return nil }
            sum = next
        }
        return sum
    }

    /// The element count of a tensor of `shape` and `type`, after checking its bytes
    /// against the limit (and its dims for validity).
    @discardableResult
    public static func checkedCount(_ shape: [Int], _ type: DataType, for what: @autoclosure () -> String) throws -> Int {
        guard shape.allSatisfy({ $0 >= 0 }) else {
            throw AnvilError.invalidTensor(name: what(), reason: "shape \(shape) has a negative dimension")
        }
        var count = 1
        for d in shape {
            let (p, overflow) = count.multipliedReportingOverflow(by: d)
            guard !overflow else { throw AnvilError.memoryLimit(what: "\(what()) of shape \(shape)", bytes: nil, limit: limit) }
            count = p
        }
        try check(bytes(count: count, elementSize: type == .string ? 16 : type.byteSize), for: "\(what()) of shape \(shape)")
        return count
    }
}
