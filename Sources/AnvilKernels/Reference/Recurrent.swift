import AnvilCore
import Foundation

/// Reference kernels for RNN, GRU and LSTM, following the ONNX equations.
public enum Recurrent {
    public enum Cell: Sendable { case rnn, gru, lstm }

    /// An activation function by its ONNX name with optional alpha and beta.
    public static func activation(_ name: String, alpha: Double?, beta: Double?) throws -> @Sendable (Double) -> Double {
        switch name.lowercased() {
        case "sigmoid": return { 1 / (1 + exp(-$0)) }
        case "tanh": return { tanh($0) }
        case "relu": return { max(0, $0) }
        case "affine": let a = alpha ?? 1, b = beta ?? 0; return { a * $0 + b }
        case "leakyrelu": let a = alpha ?? 0.01; return { $0 < 0 ? a * $0 : $0 }
        case "thresholdedrelu": let a = alpha ?? 1; return { $0 > a ? $0 : 0 }
        case "scaledtanh": let a = alpha ?? 1, b = beta ?? 1; return { a * tanh(b * $0) }
        case "hardsigmoid": let a = alpha ?? 0.2, b = beta ?? 0.5; return { max(0, min(1, a * $0 + b)) }
        case "elu": let a = alpha ?? 1; return { $0 < 0 ? a * (exp($0) - 1) : $0 }
        case "softsign": return { $0 / (1 + abs($0)) }
        case "softplus": return { log1p(exp($0)) }
        default: throw AnvilError.invalidTensor(name: "activation", reason: "unknown activation '\(name)'")
        }
    }

    public struct Parameters: Sendable {
        public var cell: Cell
        public var hidden: Int
        /// "forward", "reverse" or "bidirectional".
        public var direction = "forward"
        /// Activations per direction: f, g (GRU/LSTM), h (LSTM).
        public var activations: [@Sendable (Double) -> Double] = []
        public var clip: Double?
        public var linearBeforeReset = false
        public var inputForget = false
        /// Batch-major input and output (layout = 1).
        public var batchMajor = false
        public init(cell: Cell, hidden: Int) { self.cell = cell; self.hidden = hidden }
    }

    /// Runs the sequence; returns Y, Y_h and (LSTM) Y_c.
    public static func run(x xIn: Tensor, w: Tensor, r: Tensor, b: Tensor?, sequenceLengths: Tensor?, initialH: Tensor?,
                           initialC: Tensor?, peepholes: Tensor?, _ p: Parameters) throws -> [Tensor] {
        func fail(_ s: String) -> AnvilError { .invalidTensor(name: "\(p.cell)", reason: s) }
        guard xIn.rank == 3 else { throw fail("X must be 3-D, got \(xIn.shape)") }
        let (seq, batch, inputSize) = p.batchMajor ? (xIn.shape[1], xIn.shape[0], xIn.shape[2]) : (xIn.shape[0], xIn.shape[1], xIn.shape[2])
        let dirs = p.direction == "bidirectional" ? 2 : 1
        let gates = p.cell == .lstm ? 4 : (p.cell == .gru ? 3 : 1)
        let h = p.hidden
        guard w.shape == [dirs, gates * h, inputSize], r.shape == [dirs, gates * h, h] else {
            throw fail("W \(w.shape) or R \(r.shape) do not fit \(dirs) directions, \(gates) gates, hidden \(h), input \(inputSize)")
        }
        let perDirection = p.cell == .lstm ? 3 : (p.cell == .gru ? 2 : 1)
        guard p.activations.count == perDirection * dirs else { throw fail("expected \(perDirection * dirs) activations, have \(p.activations.count)") }
        // Time-major views of the inputs.
        func at(_ t: [Double], _ shape: [Int], batchMajor: Bool) -> (Int, Int, Int) -> Double {
            batchMajor ? { a, b, c in t[(b * shape[1] + a) * shape[2] + c] } : { a, b, c in t[(a * shape[1] + b) * shape[2] + c] }
        }
        let xv = xIn.doubles, wv = w.doubles, rv = r.doubles
        let x = at(xv, xIn.shape, batchMajor: p.batchMajor)
        let bv = b?.doubles ?? Array(repeating: 0, count: dirs * 2 * gates * h)
        guard bv.count == dirs * 2 * gates * h else { throw fail("B has \(bv.count) values, expected \(dirs * 2 * gates * h)") }
        let lengths = sequenceLengths?.int64s.map { Int($0) } ?? Array(repeating: seq, count: batch)
        guard lengths.count == batch, lengths.allSatisfy({ $0 >= 0 && $0 <= seq }) else { throw fail("sequence_lens \(lengths) do not fit batch \(batch) and length \(seq)") }
        func state(_ t: Tensor?) throws -> [Double] {
            guard let t else { return Array(repeating: 0, count: dirs * batch * h) }
            let v = p.batchMajor ? try transposeFirstTwo(t) : t.doubles
            guard v.count == dirs * batch * h else { throw fail("initial state \(t.shape) does not fit [\(dirs), \(batch), \(h)]") }
            return v
        }
        var hState = try state(initialH), cState = try state(initialC)
        let pv = peepholes?.doubles ?? Array(repeating: 0, count: dirs * 3 * h)
        var y = [Double](repeating: 0, count: seq * dirs * batch * h)
        let clip = p.clip
        func clipped(_ v: Double) -> Double { clip.map { min(max(v, -$0), $0) } ?? v }
        for d in 0..<dirs {
            let reverse = p.direction == "reverse" || d == 1
            let f = p.activations[d * perDirection]
            let g = perDirection > 1 ? p.activations[d * perDirection + 1] : f
            let hAct = perDirection > 2 ? p.activations[d * perDirection + 2] : f
            let wOff = d * gates * h * inputSize, rOff = d * gates * h * h, bOff = d * 2 * gates * h
            for bi in 0..<batch {
                let len = lengths[bi]
                var hPrev = Array(hState[((d * batch + bi) * h)..<((d * batch + bi + 1) * h)])
                var cPrev = Array(cState[((d * batch + bi) * h)..<((d * batch + bi + 1) * h)])
                for step in 0..<len {
                    let t = reverse ? len - 1 - step : step
                    // Xt·Wᵀ + Wb and Ht-1·Rᵀ + Rb for every gate row.
                    var xw = [Double](repeating: 0, count: gates * h), hr = [Double](repeating: 0, count: gates * h)
                    for row in 0..<(gates * h) {
                        var a = bv[bOff + row], c = bv[bOff + gates * h + row]
                        for k in 0..<inputSize { a += x(t, bi, k) * wv[wOff + row * inputSize + k] }
                        for k in 0..<h { c += hPrev[k] * rv[rOff + row * h + k] }
                        xw[row] = a; hr[row] = c
                    }
                    var hNew = [Double](repeating: 0, count: h)
                    switch p.cell {
                    case .rnn:
                        for j in 0..<h { hNew[j] = f(clipped(xw[j] + hr[j])) }
                    case .gru:
                        let z = (0..<h).map { f(clipped(xw[$0] + hr[$0])) }
                        let reset = (0..<h).map { f(clipped(xw[h + $0] + hr[h + $0])) }
                        // Without linear_before_reset the reset gate scales H before R multiplies it.
                        let resetState = (0..<h).map { reset[$0] * hPrev[$0] }
                        for j in 0..<h {
                            var candidate: Double
                            if p.linearBeforeReset {
                                candidate = xw[2 * h + j] + reset[j] * hr[2 * h + j]
                            } else {
                                var s = bv[bOff + gates * h + 2 * h + j]
                                for k in 0..<h { s += resetState[k] * rv[rOff + (2 * h + j) * h + k] }
                                candidate = xw[2 * h + j] + s
                            }
                            hNew[j] = (1 - z[j]) * g(clipped(candidate)) + z[j] * hPrev[j]
                        }
                    case .lstm:
                        var cNew = [Double](repeating: 0, count: h)
                        for j in 0..<h {
                            let pi = pv[d * 3 * h + j], po = pv[d * 3 * h + h + j], pf = pv[d * 3 * h + 2 * h + j]
                            let i = f(clipped(xw[j] + hr[j] + pi * cPrev[j]))
                            let fg = p.inputForget ? 1 - i : f(clipped(xw[2 * h + j] + hr[2 * h + j] + pf * cPrev[j]))
                            let c = g(clipped(xw[3 * h + j] + hr[3 * h + j]))
                            cNew[j] = fg * cPrev[j] + i * c
                            let o = f(clipped(xw[h + j] + hr[h + j] + po * cNew[j]))
                            hNew[j] = o * hAct(cNew[j])
                        }
                        cPrev = cNew
                    }
                    hPrev = hNew
                    for j in 0..<h { y[((t * dirs + d) * batch + bi) * h + j] = hNew[j] }
                }
                for j in 0..<h {
                    hState[(d * batch + bi) * h + j] = hPrev[j]
                    cState[(d * batch + bi) * h + j] = cPrev[j]
                }
            }
        }
        let type = xIn.dataType
        var yShape = [seq, dirs, batch, h]
        var stateShape = [dirs, batch, h]
        if p.batchMajor {
            var t = [Double](repeating: 0, count: y.count)
            for s in 0..<seq { for d in 0..<dirs { for bi in 0..<batch { for j in 0..<h {
                t[((bi * seq + s) * dirs + d) * h + j] = y[((s * dirs + d) * batch + bi) * h + j]
            } } } }
            y = t
            yShape = [batch, seq, dirs, h]
            stateShape = [batch, dirs, h]
            hState = try transposeFirstTwo(Tensor(.double, shape: [dirs, batch, h], doubles: hState))
            cState = try transposeFirstTwo(Tensor(.double, shape: [dirs, batch, h], doubles: cState))
        }
        var outs = [try Tensor(type, shape: yShape, doubles: y), try Tensor(type, shape: stateShape, doubles: hState)]
        if p.cell == .lstm { outs.append(try Tensor(type, shape: stateShape, doubles: cState)) }
        return outs
    }

    static func transposeFirstTwo(_ t: Tensor) throws -> [Double] {
        try Movement.transpose(t, perm: [1, 0, 2]).doubles
    }
}
