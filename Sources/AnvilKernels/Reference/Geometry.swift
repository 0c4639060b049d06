import AnvilCore

/// How a conv or pool pads its input (the ONNX auto_pad attribute).
public enum AutoPad: String, Sendable {
    case notSet = "NOTSET", sameUpper = "SAME_UPPER", sameLower = "SAME_LOWER", valid = "VALID"
}

/// Sliding-window geometry shared by Conv and the pools: kernel, strides,
/// dilations and pads per spatial dimension, and the output size they give.
public struct WindowGeometry: Sendable, Equatable {
    public var kernel: [Int]
    public var strides: [Int]
    public var dilations: [Int]
    /// Padding at the start of each spatial dimension.
    public var padsBegin: [Int]
    /// Padding at the end of each spatial dimension.
    public var padsEnd: [Int]
    public var output: [Int]

    /// Resolves pads and output sizes. `pads` is ONNX order (all begins, then all ends).
    public init(input: [Int], kernel: [Int], strides: [Int]?, dilations: [Int]?, pads: [Int]?,
                autoPad: AutoPad, ceilMode: Bool = false) throws {
        let n = input.count
        guard kernel.count == n else {
            throw AnvilError.invalidTensor(name: "window", reason: "kernel has \(kernel.count) dimensions, input has \(n) spatial dimensions")
        }
        let s = strides ?? Array(repeating: 1, count: n)
        let d = dilations ?? Array(repeating: 1, count: n)
        var p = pads ?? Array(repeating: 0, count: 2 * n)
        guard s.count == n, d.count == n, p.count == 2 * n else {
            throw AnvilError.invalidTensor(name: "window", reason: "strides \(s), dilations \(d) or pads \(p) do not match \(n) spatial dimensions")
        }
        guard s.allSatisfy({ $0 > 0 }), d.allSatisfy({ $0 > 0 }), kernel.allSatisfy({ $0 > 0 }), p.allSatisfy({ $0 >= 0 }) else {
            throw AnvilError.invalidTensor(name: "window", reason: "kernel \(kernel), strides \(s) and dilations \(d) must be positive and pads \(p) non-negative")
        }
        // Bounds that keep the arithmetic below from overflowing (a damaged or hostile model's
        // attributes may hold any 64-bit value; no real window comes near them).
        let largest = Int(Int32.max)
        guard (kernel + s + d + p).allSatisfy({ $0 <= largest }), input.allSatisfy({ $0 >= 0 && $0 <= 1 << 40 }) else {
            throw AnvilError.invalidTensor(name: "window", reason: "kernel \(kernel), strides \(s), dilations \(d) or pads \(p) exceed \(largest), or input \(input) is impossible")
        }
        var out = [Int](repeating: 0, count: n)
        for i in 0..<n {
            let span = (kernel[i] - 1) * d[i] + 1
            switch autoPad {
            case .sameUpper, .sameLower:
                out[i] = (input[i] + s[i] - 1) / s[i]
                let total = max(0, (out[i] - 1) * s[i] + span - input[i])
                p[i] = autoPad == .sameUpper ? total / 2 : total - total / 2
                p[i + n] = total - p[i]
            case .valid:
                p[i] = 0; p[i + n] = 0
                out[i] = input[i] >= span ? (input[i] - span) / s[i] + 1 : 0
            case .notSet:
                let padded = input[i] + p[i] + p[i + n] - span
                if padded < 0 { out[i] = 0; continue }
                if ceilMode {
                    out[i] = (padded + s[i] - 1) / s[i] + 1
                    // The last window must start inside the input or its left padding.
                    if (out[i] - 1) * s[i] >= input[i] + p[i] { out[i] -= 1 }
                } else {
                    out[i] = padded / s[i] + 1
                }
            }
        }
        self.kernel = kernel
        self.strides = s
        self.dilations = d
        self.padsBegin = Array(p[0..<n])
        self.padsEnd = Array(p[n...])
        self.output = out
    }
}
