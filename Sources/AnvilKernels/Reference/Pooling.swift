import AnvilCore

/// Reference kernels for max, average and Lp pooling over N-d windows.
public enum Pooling {
    /// Max pooling; also returns the flat indices (row-major, or column-major per
    /// spatial plane when `columnMajorIndices`) of the chosen elements.
    public static func maxPool(_ x: Tensor, geometry g: WindowGeometry, columnMajorIndices: Bool = false) throws -> (Tensor, Tensor) {
        let (planes, inSize, outSize, table) = try layout(x, g)
        let kSize = g.kernel.reduce(1, *)
        let xs = x.doubles
        var out = [Double](repeating: 0, count: planes * outSize)
        var idx = [Int64](repeating: 0, count: planes * outSize)
        let spatial = Array(x.shape[2...])
        for p in 0..<planes {
            for o in 0..<outSize {
                var best = -Double.infinity, bestAt = -1
                for k in 0..<kSize {
                    let s = table[k * outSize + o]
                    if s >= 0 {
                        let v = xs[p * inSize + s]
                        if v > best || bestAt < 0 || v.isNaN { best = v; bestAt = s }
                    }
                }
                out[p * outSize + o] = best
                var flat = bestAt
                if columnMajorIndices, bestAt >= 0 {
                    var rem = bestAt, cm = 0, mul = 1
                    let strides = ShapeMath.strides(spatial)
                    var coords: [Int] = []
                    for d in 0..<spatial.count { coords.append(rem / strides[d]); rem %= strides[d] }
                    for d in 0..<spatial.count { cm += coords[d] * mul; mul *= spatial[d] }
                    flat = cm
                }
                idx[p * outSize + o] = Int64(p * inSize + flat)
            }
        }
        let shape = Array(x.shape[0..<2]) + g.output
        let values = x.dataType.isFloatingPoint
            ? try Tensor(x.dataType, shape: shape, doubles: out)
            : try Tensor(x.dataType, shape: shape, int64s: out.map { Tensor.int64(fromDouble: $0) })
        return (values, try Tensor(int64s: idx, shape: shape))
    }

    /// Average pooling; padding counts toward the divisor when `countIncludePad`.
    public static func averagePool(_ x: Tensor, geometry g: WindowGeometry, countIncludePad: Bool) throws -> Tensor {
        let (planes, inSize, outSize, table) = try layout(x, g)
        let kSize = g.kernel.reduce(1, *)
        let xs = x.doubles
        // With count_include_pad the divisor counts explicit padding but not the
        // part of a ceil-mode window that hangs past the padded input.
        let spatial = Array(x.shape[2...])
        var divisors = [Double](repeating: 0, count: outSize)
        if countIncludePad {
            var o = 0
            Indexing.forEachIndex(g.output) { oc in
                var count = 1
                for d in 0..<spatial.count {
                    let start = oc[d] * g.strides[d] - g.padsBegin[d]
                    var n = 0
                    for k in 0..<g.kernel[d] {
                        let p = start + k * g.dilations[d]
                        if p >= -g.padsBegin[d] && p < spatial[d] + g.padsEnd[d] { n += 1 }
                    }
                    count *= n
                }
                divisors[o] = Double(count)
                o += 1
            }
        }
        var out = [Double](repeating: 0, count: planes * outSize)
        for p in 0..<planes {
            for o in 0..<outSize {
                var sum = 0.0, n = 0
                for k in 0..<kSize {
                    let s = table[k * outSize + o]
                    if s >= 0 { sum += xs[p * inSize + s]; n += 1 }
                }
                let div = countIncludePad ? divisors[o] : Double(n)
                out[p * outSize + o] = div > 0 ? sum / div : 0
            }
        }
        return try Tensor(x.dataType, shape: Array(x.shape[0..<2]) + g.output, doubles: out)
    }

    /// Lp pooling: (Σ|x|^p)^(1/p) over each window.
    public static func lpPool(_ x: Tensor, geometry g: WindowGeometry, p: Double) throws -> Tensor {
        let (planes, inSize, outSize, table) = try layout(x, g)
        let kSize = g.kernel.reduce(1, *)
        let xs = x.doubles
        var out = [Double](repeating: 0, count: planes * outSize)
        for pl in 0..<planes {
            for o in 0..<outSize {
                var sum = 0.0
                for k in 0..<kSize {
                    let s = table[k * outSize + o]
                    if s >= 0 { sum += Foundation_pow(abs(xs[pl * inSize + s]), p) }
                }
                out[pl * outSize + o] = Foundation_pow(sum, 1 / p)
            }
        }
        return try Tensor(x.dataType, shape: Array(x.shape[0..<2]) + g.output, doubles: out)
    }

    /// Global pooling over all spatial dimensions: "avg", "max" or an Lp norm.
    public static func global(_ x: Tensor, kind: String, p: Double = 2) throws -> Tensor {
        guard x.rank >= 2 else { throw AnvilError.invalidTensor(name: "GlobalPool", reason: "input must have rank ≥ 2, got \(x.shape)") }
        let planes = x.shape[0] * x.shape[1]
        let size = x.shape[2...].reduce(1, *)
        let xs = x.doubles
        var out = [Double](repeating: 0, count: planes)
        for pl in 0..<planes {
            let slice = xs[pl * size..<(pl + 1) * size]
            switch kind {
            case "max": out[pl] = slice.contains { $0.isNaN } ? .nan : (slice.max() ?? -.infinity)
            case "avg": out[pl] = size > 0 ? slice.reduce(0, +) / Double(size) : .nan
            default: out[pl] = Foundation_pow(slice.reduce(0) { $0 + Foundation_pow(abs($1), p) }, 1 / p)
            }
        }
        return try Tensor(x.dataType, shape: Array(x.shape[0..<2]) + Array(repeating: 1, count: x.rank - 2), doubles: out)
    }

    static func layout(_ x: Tensor, _ g: WindowGeometry) throws -> (Int, Int, Int, [Int]) {
        let spatial = Array(x.shape[2...])
        let outputs = try MemoryPolicy.checkedCount(Array(x.shape[0..<2]) + g.output, x.dataType, for: "the pooling's output")
        let entries = try MemoryPolicy.checkedCount(g.kernel + g.output, .int64, for: "the pooling's window table")
        // Held at once: the input widened to Double, the Double results and indices, the output, the table.
        try MemoryPolicy.check(MemoryPolicy.total([(x.count, 8), (outputs, 8 + 8 + x.dataType.byteSize), (entries, 8)]),
                               for: "the pooling's buffers together")
        return (x.shape[0] * x.shape[1], spatial.reduce(1, *), g.output.reduce(1, *), try Linear.im2colTable(spatialIn: spatial, g: g))
    }
}

import Foundation
@inline(__always) func Foundation_pow(_ a: Double, _ b: Double) -> Double { Foundation.pow(a, b) }
