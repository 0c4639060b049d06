import AnvilCore
import Foundation

/// Reference kernel for the ONNX Attention op (opset 23+): scaled dot-product
/// attention with grouped KV heads, boolean or additive masks, causal and
/// sliding-window masking, a past KV cache, soft-capping, and the optional
/// QK output. Computes in Double and rounds once at the end.
public enum AttentionKernel {
    public struct Parameters: Sendable {
        /// Multiplier of Q·Kᵀ; nil means 1/√(head size).
        public var scale: Double?
        public var isCausal = false
        /// Heads of Q and of K/V; required for 3-D inputs.
        public var qHeads: Int?
        public var kvHeads: Int?
        /// Soft-cap c: scores become c·tanh(scores/c) when c > 0.
        public var softcap: Double = 0
        /// What the fourth output holds: 0/1 scores, 2 scores + bias, 3 softmax.
        public var qkOutputMode = 0
        /// Sliding window sizes; -1 leaves a side unbounded.
        public var leftWindow = -1
        public var rightWindow = -1
        public init() {}
    }

    /// Returns Y, present key, present value and the QK output.
    public static func run(q qIn: Tensor, k kIn: Tensor, v vIn: Tensor, mask: Tensor?, pastKey: Tensor?, pastValue: Tensor?,
                           nonpadKVLength: Tensor?, _ p: Parameters) throws -> [Tensor] {
        func fail(_ r: String) -> AnvilError { .invalidTensor(name: "Attention", reason: r) }
        guard qIn.rank == kIn.rank, kIn.rank == vIn.rank, qIn.rank == 3 || qIn.rank == 4 else {
            throw fail("Q, K and V must all be 3-D or all 4-D, got \(qIn.shape), \(kIn.shape), \(vIn.shape)")
        }
        guard (pastKey == nil) == (pastValue == nil) else { throw fail("past_key and past_value must be given together") }
        let threeD = qIn.rank == 3
        let batch = qIn.shape[0]
        // Bring everything to [batch, heads, sequence, head size].
        func heads(_ t: Tensor, _ n: Int?, _ what: String) throws -> (values: [Double], heads: Int, seq: Int, size: Int) {
            if !threeD { return (t.doubles, t.shape[1], t.shape[2], t.shape[3]) }
            guard let n, n > 0, t.shape[2] % n == 0 else { throw fail("\(what) hidden size \(t.shape[2]) does not divide into the given number of heads") }
            let size = t.shape[2] / n, seq = t.shape[1]
            let src = t.doubles
            var out = [Double](repeating: 0, count: src.count)
            for b in 0..<t.shape[0] { for s in 0..<seq { for h in 0..<n { for d in 0..<size {
                out[((b * n + h) * seq + s) * size + d] = src[((b * seq + s) * n + h) * size + d]
            } } } }
            return (out, n, seq, size)
        }
        let q = try heads(qIn, p.qHeads, "Q")
        var k = try heads(kIn, p.kvHeads, "K")
        var v = try heads(vIn, p.kvHeads, "V")
        guard kIn.shape[0] == batch, vIn.shape[0] == batch, q.size == k.size, k.heads == v.heads, k.seq == v.seq else {
            throw fail("Q \(qIn.shape), K \(kIn.shape) and V \(vIn.shape) do not fit together")
        }
        guard k.heads > 0, q.heads % k.heads == 0 else { throw fail("\(q.heads) query heads are not a multiple of \(k.heads) key/value heads") }
        let pastLength = pastKey?.shape[2] ?? 0
        if let pk = pastKey, let pv = pastValue {
            guard pk.rank == 4, pv.rank == 4, pk.shape[0] == batch, pk.shape[1] == k.heads, pk.shape[3] == k.size,
                  pv.shape[0] == batch, pv.shape[1] == v.heads, pv.shape[2] == pastLength, pv.shape[3] == v.size else {
                throw fail("past_key \(pk.shape) or past_value \(pv.shape) do not fit K \(kIn.shape) and V \(vIn.shape)")
            }
            k.values = concatSequences(pk.doubles, k.values, batch: batch, heads: k.heads, first: pastLength, second: k.seq, size: k.size)
            v.values = concatSequences(pv.doubles, v.values, batch: batch, heads: v.heads, first: pastLength, second: v.seq, size: v.size)
            k.seq += pastLength
            v.seq += pastLength
        }
        let (sq, skv, hq, d, dv) = (q.seq, k.seq, q.heads, q.size, v.size)
        let group = hq / k.heads
        let bias = try maskBias(mask, batch: batch, heads: hq, sq: sq, skv: skv, pastLength: pastLength, nonpad: nonpadKVLength, p, fail)
        let scale = p.scale ?? 1 / Double(d).squareRoot()
        var y = [Double](repeating: 0, count: batch * hq * sq * dv)
        var qkOut = [Double](repeating: 0, count: batch * hq * sq * skv)
        var row = [Double](repeating: 0, count: skv)
        for b in 0..<batch { for h in 0..<hq {
            let kh = h / group
            for i in 0..<sq {
                let qBase = ((b * hq + h) * sq + i) * d
                var maxValue = -Double.infinity, maxBias = -Double.infinity
                for j in 0..<skv {
                    let kBase = ((b * k.heads + kh) * skv + j) * d
                    var dot = 0.0
                    for t in 0..<d { dot += q.values[qBase + t] * k.values[kBase + t] }
                    var s = dot * scale
                    if p.softcap > 0 { s = p.softcap * tanh(s / p.softcap) }
                    let bij = bias[((b * hq + h) * sq + i) * skv + j]
                    let at = ((b * hq + h) * sq + i) * skv + j
                    qkOut[at] = p.qkOutputMode == 2 ? s + bij : s
                    row[j] = s + bij
                    maxValue = max(maxValue, row[j])
                    maxBias = max(maxBias, bij)
                }
                // A row whose every key is masked out attends to nothing: output 0.
                let allMasked = maxBias == -.infinity
                var sum = 0.0
                for j in 0..<skv { row[j] = allMasked ? 0 : exp(row[j] - (maxValue.isFinite ? maxValue : 0)); sum += row[j] }
                for j in 0..<skv {
                    row[j] = allMasked || sum == 0 ? 0 : row[j] / sum
                    if p.qkOutputMode == 3 { qkOut[((b * hq + h) * sq + i) * skv + j] = row[j] }
                }
                let yBase = ((b * hq + h) * sq + i) * dv
                // Every term, zero weights too: 0 · ∞ and 0 · NaN in V are NaN, as in a matrix product.
                for j in 0..<skv {
                    let vBase = ((b * v.heads + kh) * skv + j) * dv
                    for t in 0..<dv { y[yBase + t] += row[j] * v.values[vBase + t] }
                }
            }
        } }
        var yShape = [batch, hq, sq, dv]
        if threeD {
            var t = [Double](repeating: 0, count: y.count)
            for b in 0..<batch { for h in 0..<hq { for s in 0..<sq { for e in 0..<dv {
                t[((b * sq + s) * hq + h) * dv + e] = y[((b * hq + h) * sq + s) * dv + e]
            } } } }
            y = t
            yShape = [batch, sq, hq * dv]
        }
        let type = qIn.dataType
        return [try Tensor(type, shape: yShape, doubles: y),
                try Tensor(type, shape: [batch, k.heads, skv, d], doubles: k.values),
                try Tensor(type, shape: [batch, v.heads, skv, dv], doubles: v.values),
                try Tensor(type, shape: [batch, hq, sq, skv], doubles: qkOut)]
    }

    static func concatSequences(_ a: [Double], _ b: [Double], batch: Int, heads: Int, first: Int, second: Int, size: Int) -> [Double] {
        var out: [Double] = []
        out.reserveCapacity(a.count + b.count)
        for bh in 0..<(batch * heads) {
            out += a[(bh * first * size)..<((bh + 1) * first * size)]
            out += b[(bh * second * size)..<((bh + 1) * second * size)]
        }
        return out
    }

    /// The additive bias [batch, heads, sq, skv]: user mask, causal and window limits, KV padding.
    static func maskBias(_ mask: Tensor?, batch: Int, heads: Int, sq: Int, skv: Int, pastLength: Int, nonpad: Tensor?,
                         _ p: Parameters, _ fail: (String) -> AnvilError) throws -> [Double] {
        let full = [batch, heads, sq, skv]
        var bias = [Double](repeating: 0, count: full.reduce(1, *))
        if let mask {
            guard mask.rank >= 1, mask.rank <= 4, mask.shape[mask.rank - 1] <= skv else {
                throw fail("attn_mask \(mask.shape) does not fit \(sq)×\(skv) scores")
            }
            // Masks shorter than the key sequence are padded as masked out.
            let isBool = mask.dataType == .bool
            let width = mask.shape[mask.rank - 1]
            let values = isBool ? mask.bools.map { $0 ? 0.0 : -.infinity } : mask.doubles
            var padded: [Double] = []
            let rows = values.count / max(width, 1)
            for r in 0..<rows { padded += values[(r * width)..<((r + 1) * width)] + Array(repeating: -.infinity, count: skv - width) }
            let shape = Array(mask.shape.dropLast()) + [skv]
            guard let _ = ShapeMath.broadcast([shape, full]), ShapeMath.broadcast([shape, full]) == full else {
                throw fail("attn_mask \(mask.shape) cannot be broadcast to \(full)")
            }
            let source = try Tensor(.double, shape: shape, doubles: padded)
            bias = try Indexing.broadcast(source, to: full).doubles
        }
        let lengths = nonpad.map { $0.int64s.map { Int($0) } }
        if let lengths, lengths.count != batch { throw fail("nonpad_kv_seqlen has \(lengths.count) entries for batch \(batch)") }
        for b in 0..<batch {
            let offset = pastKeyOffset(lengths: lengths, b: b, sq: sq, past: pastLength)
            for h in 0..<heads { for i in 0..<sq { for j in 0..<skv {
                let at = ((b * heads + h) * sq + i) * skv + j
                let position = i + offset
                if p.isCausal && j > position { bias[at] = -.infinity }
                if p.leftWindow >= 0 && position - j > p.leftWindow { bias[at] = -.infinity }
                if p.rightWindow >= 0 && j - position > p.rightWindow { bias[at] = -.infinity }
                if let lengths, j >= lengths[b] { bias[at] = -.infinity }
            } } }
        }
        return bias
    }

    static func pastKeyOffset(lengths: [Int]?, b: Int, sq: Int, past: Int) -> Int {
        if past == 0, let lengths { return lengths[b] - sq }
        return past
    }
}
