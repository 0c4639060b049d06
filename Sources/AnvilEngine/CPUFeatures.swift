import AnvilCore
import Foundation

/// CPU features an engine may require, as oneDNN names its instruction sets.
public struct CPUFeatures: OptionSet, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let avx2 = CPUFeatures(rawValue: 1 << 0)
    /// AVX-512 F + BW + VL + DQ.
    public static let avx512Core = CPUFeatures(rawValue: 1 << 1)
    public static let avx512Vnni = CPUFeatures(rawValue: 1 << 2)
    public static let avx512Bf16 = CPUFeatures(rawValue: 1 << 3)
    public static let amx = CPUFeatures(rawValue: 1 << 4)
    /// AVX-512 FP16 arithmetic (Intel Sapphire Rapids and later).
    public static let avx512Fp16 = CPUFeatures(rawValue: 1 << 5)

    static let names: [(CPUFeatures, String)] = [(.avx2, "avx2"), (.avx512Core, "avx512_core"), (.avx512Vnni, "avx512_core_vnni"),
                                                 (.avx512Bf16, "avx512_core_bf16"), (.amx, "amx"), (.avx512Fp16, "avx512_core_fp16")]

    public var description: String {
        let parts = Self.names.filter { contains($0.0) }.map(\.1)
        let unknown = rawValue & ~Self.names.reduce(0) { $0 | $1.0.rawValue }
        return (parts + (unknown != 0 ? ["unknown(0x\(String(unknown, radix: 16)))"] : [])).joined(separator: ", ")
    }

    /// The features of this machine's CPU (from /proc/cpuinfo on Linux).
    public static let host: CPUFeatures = {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else { return [] }
        let flags = Set(line.split(separator: ":").last?.split(separator: " ").map(String.init) ?? [])
        var f: CPUFeatures = []
        if flags.contains("avx2") { f.insert(.avx2) }
        if ["avx512f", "avx512bw", "avx512vl", "avx512dq"].allSatisfy(flags.contains) { f.insert(.avx512Core) }
        if f.contains(.avx512Core), flags.contains("avx512_vnni") { f.insert(.avx512Vnni) }
        if f.contains(.avx512Core), flags.contains("avx512_bf16") { f.insert(.avx512Bf16) }
        if flags.contains("amx_tile") { f.insert(.amx) }
        if f.contains(.avx512Core), flags.contains("avx512_fp16") { f.insert(.avx512Fp16) }
        return f
    }()
}
