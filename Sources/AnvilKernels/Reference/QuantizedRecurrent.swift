import AnvilCore
import Foundation

/// Reference kernel of com.microsoft.DynamicQuantizeLSTM, the LSTM ONNX Runtime's dynamic
/// quantizer writes: W [directions, input, 4·hidden] and R [directions, hidden, 4·hidden]
/// are int8 or uint8 (transposed relative to ONNX LSTM's, gates in ONNX's i, o, f, c order)
/// with a scale and zero point per direction or per gate column. ONNX Runtime does not
/// dequantize them: it quantizes the activations to uint8 on the fly and multiplies in
/// integers, and this kernel does the same, in Float, to give its results:
///
/// - X·W once per direction for all steps, X (its first max(sequence_lens) steps, zero
///   included in its range) quantized with one scale (max − min) / 255 and zero point
///   round(−min / scale); H·R at each step with H (all rows of the batch) quantized alike;
/// - each product as int32 sums of (qa − za)(qw − zw), scaled by scale_a · scale_w[column];
/// - gate pre-activations in ORT's order: X·W + H·R, plus the peephole term, plus Wb + Rb.
///
/// ORT splits the batch between threads for the H·R product when the batch is over 4 rows
/// (or at least 2 with hidden ≤ 256), quantizing each thread's rows separately: this kernel
/// matches ORT run with one intra-op thread.
public enum QuantizedRecurrent {
    /// One direction's quantized weights [k, n]: the stored 8-bit values (uint8 or int8,
    /// row-major), a zero point and a scale per column (repeated when per direction).
    struct Weights {
        let k: Int, n: Int
        let unsigned: Bool
        let bytes: [UInt8]
        let zeroPoints: [Int32]
        let scales: [Float]
    }

    /// The uint8 scale and zero point ONNX Runtime picks for a block of activations.
    static func quantization(of values: UnsafeBufferPointer<Float>) -> (scale: Float, zeroPoint: Float) {
        var low: Float = 0, high: Float = 0
        for v in values { low = min(low, v); high = max(high, v) }
        let scale = high == low ? 1 : (high - low) / 255
        return (scale, min(max(0 - low / scale, 0), 255).rounded(.toNearestOrEven))
    }

    /// rows × k floats times the weights: quantized with one scale, multiplied in int32,
    /// scaled per column; added to `into` when `accumulate`. Σ(qa − za)(qw − zw) is taken
    /// as Σ(qa − za)·qw − zw·Σ(qa − za), exact in int32, so the weights stay in 8 bits.
    static func product(_ a: UnsafeBufferPointer<Float>, rows: Int, _ w: Weights, into c: UnsafeMutableBufferPointer<Float>, accumulate: Bool) {
        let (scale, zeroPoint) = quantization(of: a)
        let multipliers = w.scales.map { scale * $0 }
        var quantized = [Int32](repeating: 0, count: rows * w.k)
        for i in 0..<(rows * w.k) {
            // NaN (from NaN or infinite activations) counts as the zero point.
            let q = min(max((a[i] / scale).rounded(.toNearestOrEven) + zeroPoint, 0), 255) - zeroPoint
            quantized[i] = q.isNaN ? 0 : Int32(q)
        }
        var sums = [Int32](repeating: 0, count: w.n)
        w.bytes.withUnsafeBufferPointer { wv in
            sums.withUnsafeMutableBufferPointer { s in
                let base = wv.baseAddress!, n = w.n
                for row in 0..<rows {
                    for j in 0..<n { s[j] = 0 }
                    var total: Int32 = 0
                    for kk in 0..<w.k {
                        let q = quantized[row * w.k + kk]
                        if q == 0 { continue }
                        total &+= q
                        let weights = base + kk * n
                        if w.unsigned {
                            for j in 0..<n { s[j] = s[j] &+ q &* Int32(weights[j]) }
                        } else {
                            for j in 0..<n { s[j] = s[j] &+ q &* Int32(Int8(bitPattern: weights[j])) }
                        }
                    }
                    for j in 0..<n {
                        let v = Float(s[j] &- w.zeroPoints[j] &* total) * multipliers[multipliers.count == 1 ? 0 : j]
                        c[row * n + j] = accumulate ? c[row * n + j] + v : v
                    }
                }
            }
        }
    }

    /// Direction `d`'s weights from W or R [directions, k, n] with their scale and zero point.
    static func weights(_ t: Tensor, _ name: String, direction d: Int, k: Int, n: Int, scale: Tensor, zeroPoint: Tensor) throws -> Weights {
        let directions = t.shape[0]
        guard t.dataType == .int8 || t.dataType == .uint8 else { throw AnvilError.invalidTensor(name: "DynamicQuantizeLSTM", reason: "\(name) must be int8 or uint8, got \(t.dataType)") }
        guard scale.dataType == .float, zeroPoint.dataType == t.dataType, scale.shape == zeroPoint.shape,
              scale.shape == [directions] || scale.shape == [directions, n] else {
            throw AnvilError.invalidTensor(name: "DynamicQuantizeLSTM", reason: "\(name)_scale (\(scale.dataType) \(scale.shape)) and \(name)_zero_point (\(zeroPoint.dataType) \(zeroPoint.shape)) must be float and \(t.dataType), both [\(directions)] (per direction) or [\(directions), \(n)] (per column)")
        }
        let perColumn = scale.rank == 2 ? n : 1
        let scales = Array(scale.floats[(d * perColumn)..<((d + 1) * perColumn)])
        let zeros = zeroPoint.int64s[(d * perColumn)..<((d + 1) * perColumn)].map { Int32($0) }
        let bytes = try t.withHostBytes { Array($0[(d * k * n)..<((d + 1) * k * n)]) }
        return Weights(k: k, n: n, unsigned: t.dataType == .uint8, bytes: bytes,
                       zeroPoints: perColumn == 1 ? Array(repeating: zeros[0], count: n) : zeros, scales: scales)
    }

    /// Runs the sequence; returns Y [seq, directions, batch, hidden], Y_h and Y_c. A row
    /// whose sequence has ended enters the later H·R products as zeros (as in ONNX Runtime
    /// when Y is computed; without Y, ORT keeps its last state in the quantization range).
    public static func dynamicQuantizeLSTM(x: Tensor, w: Tensor, r: Tensor, b: Tensor?, sequenceLengths: Tensor?, initialH: Tensor?, initialC: Tensor?,
                                           peepholes: Tensor?, wScale: Tensor, wZeroPoint: Tensor, rScale: Tensor, rZeroPoint: Tensor,
                                           _ p: Recurrent.Parameters) throws -> [Tensor] {
        func fail(_ s: String) -> AnvilError { .invalidTensor(name: "DynamicQuantizeLSTM", reason: s) }
        guard x.rank == 3, x.dataType == .float else { throw fail("X must be 3-D float [seq, batch, input], got \(x.dataType) \(x.shape)") }
        let (seq, batch, inputSize) = (x.shape[0], x.shape[1], x.shape[2])
        let dirs = p.direction == "bidirectional" ? 2 : 1, h = p.hidden, gates = 4 * h
        guard w.shape == [dirs, inputSize, gates], r.shape == [dirs, h, gates] else {
            throw fail("W \(w.shape) and R \(r.shape) must be [\(dirs), \(inputSize), \(gates)] and [\(dirs), \(h), \(gates)] (directions, input or hidden, 4·hidden)")
        }
        guard p.activations.count == 3 * dirs else { throw fail("expected \(3 * dirs) activations, have \(p.activations.count)") }
        func floats(_ t: Tensor?, _ name: String, _ shape: [Int]) throws -> [Float]? {
            guard let t else { return nil }
            guard t.dataType == .float, t.shape == shape else { throw fail("\(name) must be float \(shape), got \(t.dataType) \(t.shape)") }
            return t.floats
        }
        let bias = try floats(b, "B", [dirs, 2 * gates]), peep = try floats(peepholes, "P", [dirs, 3 * h])
        let h0 = try floats(initialH, "initial_h", [dirs, batch, h]), c0 = try floats(initialC, "initial_c", [dirs, batch, h])
        let lengths = try sequenceLengths.map { t -> [Int] in
            guard t.shape == [batch] else { throw fail("sequence_lens must be [\(batch)], got \(t.shape)") }
            return t.int64s.map { Int($0) }
        } ?? Array(repeating: seq, count: batch)
        guard lengths.allSatisfy({ $0 >= 0 && $0 <= seq }) else { throw fail("sequence_lens \(lengths) must lie in [0, \(seq)]") }
        let xv = x.floats
        var y = [Float](repeating: 0, count: seq * dirs * batch * h)
        var finalH = [Float](repeating: 0, count: dirs * batch * h), finalC = finalH
        let prepared = try (0..<dirs).map { d in
            (try weights(w, "W", direction: d, k: inputSize, n: gates, scale: wScale, zeroPoint: wZeroPoint),
             try weights(r, "R", direction: d, k: h, n: gates, scale: rScale, zeroPoint: rZeroPoint))
        }
        // The directions are independent: one thread each (every output element is written by one).
        struct Outputs: @unchecked Sendable { let y, finalH, finalC: UnsafeMutablePointer<Float> }
        y.withUnsafeMutableBufferPointer { yb in
            finalH.withUnsafeMutableBufferPointer { hb in
                finalC.withUnsafeMutableBufferPointer { cb in
                    let out = Outputs(y: yb.baseAddress!, finalH: hb.baseAddress!, finalC: cb.baseAddress!)
                    nonisolated(unsafe) let (xv, prepared, bias, peep, h0, c0, lengths) = (xv, prepared, bias, peep, h0, c0, lengths)
                    Parallel.forEach(dirs) { d in
                        direction(d, xv: xv, weights: prepared[d], bias: bias, peep: peep, h0: h0, c0: c0, lengths: lengths,
                                  seq: seq, batch: batch, inputSize: inputSize, dirs: dirs, p, out.y, out.finalH, out.finalC)
                    }
                }
            }
        }
        return [try Tensor(floats: y, shape: [seq, dirs, batch, h]), try Tensor(floats: finalH, shape: [dirs, batch, h]),
                try Tensor(floats: finalC, shape: [dirs, batch, h])]
    }

    /// One direction of `dynamicQuantizeLSTM`, writing its part of Y, Y_h and Y_c.
    static func direction(_ d: Int, xv: [Float], weights: (Weights, Weights), bias: [Float]?, peep: [Float]?, h0: [Float]?, c0: [Float]?,
                          lengths: [Int], seq: Int, batch: Int, inputSize: Int, dirs: Int, _ p: Recurrent.Parameters,
                          _ y: UnsafeMutablePointer<Float>, _ finalH: UnsafeMutablePointer<Float>, _ finalC: UnsafeMutablePointer<Float>) {
        let h = p.hidden, gates = 4 * h, steps = lengths.max() ?? 0
        let reverse = p.direction == "reverse" || d == 1
        let (f, g, hAct) = (p.activations[3 * d], p.activations[3 * d + 1], p.activations[3 * d + 2])
        let (wd, rd) = weights
        // X·W for every step at once; a reverse direction reads each row's steps backwards.
        var rowsIn = [Float](repeating: 0, count: steps * batch * inputSize)
        for t in 0..<steps {
            for bi in 0..<batch {
                let source = reverse && t < lengths[bi] ? lengths[bi] - 1 - t : t
                for k in 0..<inputSize { rowsIn[(t * batch + bi) * inputSize + k] = xv[(source * batch + bi) * inputSize + k] }
            }
        }
        var xw = [Float](repeating: 0, count: steps * batch * gates)
        rowsIn.withUnsafeBufferPointer { a in xw.withUnsafeMutableBufferPointer { product(a, rows: steps * batch, wd, into: $0, accumulate: false) } }
        let fused = (0..<gates).map { j in bias.map { $0[d * 2 * gates + j] + $0[d * 2 * gates + gates + j] } ?? 0 }
        var hPrev = h0.map { Array($0[(d * batch * h)..<((d + 1) * batch * h)]) } ?? Array(repeating: 0, count: batch * h)
        var cPrev = c0.map { Array($0[(d * batch * h)..<((d + 1) * batch * h)]) } ?? Array(repeating: 0, count: batch * h)
        func clipped(_ v: Float) -> Float { p.clip.map { min(max(v, -Float($0)), Float($0)) } ?? v }
        for t in 0..<steps {
            var pre = Array(xw[(t * batch * gates)..<((t + 1) * batch * gates)])
            hPrev.withUnsafeBufferPointer { a in pre.withUnsafeMutableBufferPointer { product(a, rows: batch, rd, into: $0, accumulate: true) } }
            for bi in 0..<batch {
                guard t < lengths[bi] else {
                    for j in 0..<h { hPrev[bi * h + j] = 0 }
                    continue
                }
                let row = bi * gates, state = bi * h
                for j in 0..<h {
                    let cp = cPrev[state + j]
                    var gi = pre[row + j], go = pre[row + h + j], gf = pre[row + 2 * h + j], gc = pre[row + 3 * h + j]
                    if let peep { gi += cp * peep[d * 3 * h + j]; gf += cp * peep[d * 3 * h + 2 * h + j] }
                    gi = Float(f(Double(clipped(gi + fused[j]))))
                    gf = p.inputForget ? 1 - gi : Float(f(Double(clipped(gf + fused[2 * h + j]))))
                    gc = Float(g(Double(clipped(gc + fused[3 * h + j]))))
                    let c = cp * gf + gi * gc
                    if let peep { go += c * peep[d * 3 * h + h + j] }
                    go = Float(f(Double(clipped(go + fused[h + j]))))
                    let hv = go * Float(hAct(Double(c)))
                    cPrev[state + j] = c
                    hPrev[state + j] = hv
                    let time = reverse ? lengths[bi] - 1 - t : t
                    y[((time * dirs + d) * batch + bi) * h + j] = hv
                }
                if t == lengths[bi] - 1 {
                    for j in 0..<h { finalH[(d * batch + bi) * h + j] = hPrev[state + j]; finalC[(d * batch + bi) * h + j] = cPrev[state + j] }
                }
            }
        }
    }
}
