import AnvilCore
import Foundation

/// Signal processing: the window functions.
func registerSignal(_ b: inout KernelTableBuilder) {
    let windows: [(String, @Sendable (Double, Double) -> Double)] = [
        ("HannWindow", { n, N in 0.5 - 0.5 * Foundation.cos(2 * .pi * n / N) }),
        ("HammingWindow", { n, N in 25.0 / 46 - (1 - 25.0 / 46) * Foundation.cos(2 * .pi * n / N) }),
        ("BlackmanWindow", { n, N in 0.42 - 0.5 * Foundation.cos(2 * .pi * n / N) + 0.08 * Foundation.cos(4 * .pi * n / N) }),
    ]
    for (name, f) in windows {
        b.add1(name, since: 17) { ctx in
            let size = Int(clamping: try ctx.input(0).int64s.first ?? 0)
            guard size >= 0, size <= 1 << 30 else { throw ctx.fail("size \(size) is invalid") }
            let periodic = try ctx.attributes.int("periodic", 1) != 0
            let type = DataType(rawValue: Int32(try ctx.attributes.int("output_datatype", 1))) ?? .float
            let denominator = Double(periodic ? size : size - 1)
            return try Tensor(type, shape: [size], doubles: (0..<size).map { f(Double($0), denominator) })
        }
    }
}
