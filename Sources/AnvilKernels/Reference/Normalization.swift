import AnvilCore
import Foundation

/// Reference kernels for normalizations and softmax-like ops.
public enum Normalization {
    /// Inference-mode batch normalization over axis 1.
    public static func batchNorm(_ x: Tensor, scale: Tensor, bias: Tensor, mean: Tensor, variance: Tensor, epsilon: Float) throws -> Tensor {
        guard x.rank >= 2 else { throw AnvilError.invalidTensor(name: "BatchNormalization", reason: "input must have rank ≥ 2, got \(x.shape)") }
        let c = x.shape[1], inner = x.shape[2...].reduce(1, *)
        for (n, t) in [("scale", scale), ("B", bias), ("mean", mean), ("var", variance)] where t.count != c {
            throw AnvilError.invalidTensor(name: "BatchNormalization", reason: "\(n) has \(t.count) elements for \(c) channels")
        }
        let s = scale.doubles, b = bias.doubles, m = mean.doubles, v = variance.doubles
        let mul = (0..<c).map { s[$0] / (v[$0] + Double(epsilon)).squareRoot() }
        let add = (0..<c).map { b[$0] - m[$0] * mul[$0] }
        if case .float(let xs) = x.storage {
            var out = xs
            let mf = mul.map { Float($0) }, af = add.map { Float($0) }
            for i in 0..<xs.count { let ch = (i / inner) % c; out[i] = xs[i] * mf[ch] + af[ch] }
            return try Tensor(shape: x.shape, storage: .float(out))
        }
        let xs = x.doubles
        return try Tensor(x.dataType, shape: x.shape, doubles: xs.indices.map { xs[$0] * mul[($0 / inner) % c] + add[($0 / inner) % c] })
    }

    /// Normalizes groups of `groupSize` consecutive elements to zero mean, unit variance,
    /// then applies per-element scale and bias picked by `affineIndex`.
    static func normalizeGroups(_ xs: [Double], groupSize: Int, epsilon: Double, rms: Bool = false,
                                affine: (Int, Double) -> Double) -> [Double] {
        var out = [Double](repeating: 0, count: xs.count)
        guard groupSize > 0 else { return out }
        for g in 0..<(xs.count / groupSize) {
            let slice = xs[g * groupSize..<(g + 1) * groupSize]
            let mean = rms ? 0 : slice.reduce(0, +) / Double(groupSize)
            let variance = slice.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(groupSize)
            let inv = 1 / (variance + epsilon).squareRoot()
            for i in 0..<groupSize {
                let at = g * groupSize + i
                out[at] = affine(at, (xs[at] - mean) * inv)
            }
        }
        return out
    }

    /// LayerNormalization over the dimensions from `axis` on; also returns mean and inverse std-dev.
    public static func layerNorm(_ x: Tensor, scale: Tensor, bias: Tensor?, axis: Int, epsilon: Float) throws -> [Tensor] {
        let inner = x.shape[axis...].reduce(1, *)
        let outer = x.count / max(inner, 1)
        let normShape = Array(x.shape[axis...])
        let s = try Indexing.broadcast(scale, to: normShape).doubles
        let b = try bias.map { try Indexing.broadcast($0, to: normShape).doubles }
        let xs = x.doubles
        let out = normalizeGroups(xs, groupSize: inner, epsilon: Double(epsilon)) { at, v in
            v * s[at % inner] + (b?[at % inner] ?? 0)
        }
        var means = [Double](repeating: 0, count: outer), invStd = [Double](repeating: 0, count: outer)
        for g in 0..<outer where inner > 0 {
            let slice = xs[g * inner..<(g + 1) * inner]
            let m = slice.reduce(0, +) / Double(inner)
            means[g] = m
            invStd[g] = 1 / (slice.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(inner) + Double(epsilon)).squareRoot()
        }
        let statShape = Array(x.shape[..<axis]) + Array(repeating: 1, count: x.rank - axis)
        return [try Tensor(x.dataType, shape: x.shape, doubles: out),
                try Tensor(.float, shape: statShape, doubles: means), try Tensor(.float, shape: statShape, doubles: invStd)]
    }

    /// RMSNormalization over the dimensions from `axis` on.
    public static func rmsNorm(_ x: Tensor, scale: Tensor, axis: Int, epsilon: Float) throws -> Tensor {
        let inner = x.shape[axis...].reduce(1, *)
        let s = try Indexing.broadcast(scale, to: Array(x.shape[axis...])).doubles
        let out = normalizeGroups(x.doubles, groupSize: inner, epsilon: Double(epsilon), rms: true) { at, v in v * s[at % inner] }
        return try Tensor(x.dataType, shape: x.shape, doubles: out)
    }

    /// InstanceNormalization: per (n, c) over spatial dims, per-channel scale and bias.
    public static func instanceNorm(_ x: Tensor, scale: Tensor, bias: Tensor, epsilon: Float) throws -> Tensor {
        let c = x.shape[1], inner = x.shape[2...].reduce(1, *)
        let s = scale.doubles, b = bias.doubles
        let out = normalizeGroups(x.doubles, groupSize: inner, epsilon: Double(epsilon)) { at, v in
            let ch = (at / inner) % c
            return v * s[ch] + b[ch]
        }
        return try Tensor(x.dataType, shape: x.shape, doubles: out)
    }

    /// GroupNormalization: channels split into groups; scale and bias per channel
    /// (opset 21) or per group (opset 18, `perGroupAffine`).
    public static func groupNorm(_ x: Tensor, scale: Tensor, bias: Tensor, groups: Int, epsilon: Float, perGroupAffine: Bool) throws -> Tensor {
        let c = x.shape[1], inner = x.shape[2...].reduce(1, *)
        guard groups > 0, c % groups == 0 else { throw AnvilError.invalidTensor(name: "GroupNormalization", reason: "\(c) channels do not divide into \(groups) groups") }
        let s = scale.doubles, b = bias.doubles
        let out = normalizeGroups(x.doubles, groupSize: c / groups * inner, epsilon: Double(epsilon)) { at, v in
            let ch = (at / inner) % c
            let k = perGroupAffine ? ch / (c / groups) : ch
            return v * s[k] + b[k]
        }
        return try Tensor(x.dataType, shape: x.shape, doubles: out)
    }

    /// Local response normalization across channels.
    public static func lrn(_ x: Tensor, size: Int, alpha: Float, beta: Float, bias: Float) throws -> Tensor {
        let c = x.shape[1], inner = x.shape[2...].reduce(1, *), n = x.shape[0]
        let xs = x.doubles
        var out = xs
        let lo = (size - 1) / 2, hi = size - 1 - lo
        for b in 0..<n { for ch in 0..<c { for i in 0..<inner {
            var sum = 0.0
            for k in max(0, ch - lo)...min(c - 1, ch + hi) { let v = xs[(b * c + k) * inner + i]; sum += v * v }
            let at = (b * c + ch) * inner + i
            out[at] = xs[at] / Foundation.pow(Double(bias) + Double(alpha) / Double(size) * sum, Double(beta))
        } } }
        return try Tensor(x.dataType, shape: x.shape, doubles: out)
    }

    /// Softmax, LogSoftmax or Hardmax. With `coerced2D` (opset < 13) the input is
    /// flattened to [outer, inner] at `axis`; otherwise the op runs along `axis` alone.
    public static func softmax(_ x: Tensor, axis: Int, coerced2D: Bool, kind: String) throws -> Tensor {
        let n: Int, inner: Int
        if coerced2D {
            n = x.shape[axis...].reduce(1, *); inner = 1
        } else {
            n = x.shape[axis]; inner = x.shape[(axis + 1)...].reduce(1, *)
        }
        let outer = x.count / max(n * inner, 1)
        let xs = x.doubles
        var out = [Double](repeating: 0, count: xs.count)
        for o in 0..<outer {
            for i in 0..<inner {
                let at = { (k: Int) in (o * n + k) * inner + i }
                var m = -Double.infinity
                var arg = 0
                for k in 0..<n where xs[at(k)] > m { m = xs[at(k)]; arg = k }
                if kind == "hardmax" {
                    for k in 0..<n { out[at(k)] = k == arg ? 1 : 0 }
                    continue
                }
                var sum = 0.0
                for k in 0..<n { sum += Foundation.exp(xs[at(k)] - m) }
                for k in 0..<n {
                    out[at(k)] = kind == "log" ? xs[at(k)] - m - Foundation.log(sum) : Foundation.exp(xs[at(k)] - m) / sum
                }
            }
        }
        return try Tensor(x.dataType, shape: x.shape, doubles: out)
    }
}
