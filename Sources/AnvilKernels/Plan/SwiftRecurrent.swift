import AnvilCore
import Foundation

/// ONNX's LSTM in Float on plan memory, with its default activations (sigmoid, tanh,
/// tanh), clip, input_forget, peepholes, sequence lengths, both layouts and all three
/// directions: the gate order i, o, f, c and the arithmetic of `Recurrent.run`.
///
/// W and R are transposed once, when the plan is made, to [k, 4·hidden], so every
/// product is a run of contiguous multiply-adds the compiler vectorizes. Per direction,
/// X·W (plus both biases) is computed for every step at once, then H·R at each step,
/// row by row of the batch; a row whose sequence has ended keeps its state. The two
/// directions of a bidirectional LSTM run on separate threads; a single direction large
/// enough splits each step's hidden units between threads instead. Every sum runs in
/// the same order whatever the thread count.
final class SwiftLSTM: @unchecked Sendable {
    let seq, batch, input, hidden, directions: Int
    let batchMajor, inputForget: Bool
    /// Whether the one direction runs backwards ("reverse").
    let reverse: Bool
    let clip: Float?
    /// Per direction: Wᵀ [input, 4·hidden], Rᵀ [hidden, 4·hidden], Wb + Rb [4·hidden], peepholes [3·hidden].
    private let w, r, bias: UnsafeMutablePointer<Float>
    private let peepholes: UnsafeMutablePointer<Float>?
    /// Per direction: X·W [seq·batch, 4·hidden], pre-activations [batch, 4·hidden], H and C [batch, hidden].
    private let scratch: UnsafeMutablePointer<Float>
    /// Per row of the batch, its sequence length.
    private let lengths: UnsafeMutablePointer<Int>
    private var gates: Int { 4 * hidden }
    private var scratchPerDirection: Int { seq * batch * gates + batch * gates + 2 * batch * hidden }

    /// `w` [directions, 4·hidden, input], `r` [directions, 4·hidden, hidden], `b`
    /// [directions, 8·hidden], `p` [directions, 3·hidden] as ONNX gives them; `allocate`
    /// gives memory that lives as long as the plan.
    init(seq: Int, batch: Int, input: Int, hidden: Int, directions: Int, batchMajor: Bool, reverse: Bool, clip: Float?, inputForget: Bool,
         w: [Float], r: [Float], b: [Float]?, p: [Float]?, allocate: (Int) -> UnsafeMutablePointer<Float>, allocateInts: (Int) -> UnsafeMutablePointer<Int>) {
        (self.seq, self.batch, self.input, self.hidden, self.directions) = (seq, batch, input, hidden, directions)
        (self.batchMajor, self.reverse, self.clip, self.inputForget) = (batchMajor, reverse, clip, inputForget)
        let g = 4 * hidden
        self.w = allocate(directions * input * g)
        self.r = allocate(directions * hidden * g)
        bias = allocate(directions * g)
        for d in 0..<directions {
            for row in 0..<g {
                for k in 0..<input { self.w[d * input * g + k * g + row] = w[(d * g + row) * input + k] }
                for k in 0..<hidden { self.r[d * hidden * g + k * g + row] = r[(d * g + row) * hidden + k] }
                bias[d * g + row] = b.map { $0[d * 2 * g + row] + $0[d * 2 * g + g + row] } ?? 0
            }
        }
        if let p {
            peepholes = allocate(directions * 3 * hidden)
            for i in 0..<(directions * 3 * hidden) { peepholes![i] = p[i] }
        } else {
            peepholes = nil
        }
        scratch = allocate(directions * (seq * batch * g + batch * g + 2 * batch * hidden))
        lengths = allocateInts(batch)
    }

    /// Runs the sequence. `sequenceLengths` holds `batch` int32 or int64 values (nil: all
    /// `seq`); absent initial states are zeros; absent outputs are not written.
    func run(x: UnsafePointer<Float>, sequenceLengths: UnsafeRawPointer?, wideLengths: Bool, h0: UnsafePointer<Float>?, c0: UnsafePointer<Float>?,
             y: UnsafeMutablePointer<Float>?, yh: UnsafeMutablePointer<Float>?, yc: UnsafeMutablePointer<Float>?, layer: String) throws {
        var ragged = false
        for bi in 0..<batch {
            let n = sequenceLengths.map { wideLengths ? Int($0.load(fromByteOffset: 8 * bi, as: Int64.self)) : Int($0.load(fromByteOffset: 4 * bi, as: Int32.self)) } ?? seq
            guard n >= 0, n <= seq else {
                throw AnvilError.invalidNode(node: layer, op: "LSTM", reason: "sequence_lens[\(bi)] is \(n), outside [0, \(seq)]")
            }
            lengths[bi] = n
            ragged = ragged || n != seq
        }
        // Steps past a row's length leave zeros in Y.
        if ragged, let y { y.update(repeating: 0, count: seq * directions * batch * hidden) }
        io = Pointers(x: x, h0: h0, c0: c0, y: y, yh: yh, yc: yc)
        defer { io = Pointers() }
        if directions == 2 {
            Parallel.forEach(2) { d in self.direction(d, parts: 1) }
        } else {
            direction(0, parts: batch * hidden * gates >= 1 << 17 ? Parallel.threads : 1)
        }
    }

    /// The tensors of the current run.
    private struct Pointers {
        var x: UnsafePointer<Float>?, h0: UnsafePointer<Float>?, c0: UnsafePointer<Float>?
        var y: UnsafeMutablePointer<Float>?, yh: UnsafeMutablePointer<Float>?, yc: UnsafeMutablePointer<Float>?
    }
    private var io = Pointers()

    /// Index of row `bi`'s state of direction `d` in an initial or final state tensor.
    private func stateOffset(_ d: Int, _ bi: Int) -> Int { (batchMajor ? bi * directions + d : d * batch + bi) * hidden }

    /// Direction `d`'s scratch: X·W, pre-activations, H, C.
    private func buffers(_ d: Int) -> (xw: UnsafeMutablePointer<Float>, pre: UnsafeMutablePointer<Float>, h: UnsafeMutablePointer<Float>, c: UnsafeMutablePointer<Float>) {
        let xw = scratch + d * scratchPerDirection
        let pre = xw + seq * batch * gates
        let h = pre + batch * gates
        return (xw, pre, h, h + batch * hidden)
    }

    private func direction(_ d: Int, parts: Int) {
        let h = hidden
        let (_, _, hs, cs) = buffers(d)
        // X·W + Wb + Rb for every step and row, in time order.
        Parallel.ranges(seq * batch, parts: parts) { range in self.inputProducts(d, rows: range) }
        for bi in 0..<batch {
            let o = stateOffset(d, bi)
            if let h0 = io.h0 { (hs + bi * h).update(from: h0 + o, count: h) } else { (hs + bi * h).update(repeating: 0, count: h) }
            if let c0 = io.c0 { (cs + bi * h).update(from: c0 + o, count: h) } else { (cs + bi * h).update(repeating: 0, count: h) }
        }
        var longest = 0
        for bi in 0..<batch { longest = max(longest, lengths[bi]) }
        for s in 0..<longest {
            // Each part takes a range of hidden units: their four gate columns, then their cells.
            Parallel.ranges(h, parts: parts) { units in self.stateProducts(d, step: s, units: units) }
            Parallel.ranges(h, parts: parts) { units in self.cells(d, step: s, units: units) }
        }
        for bi in 0..<batch {
            let o = stateOffset(d, bi)
            io.yh?.advanced(by: o).update(from: hs + bi * h, count: h)
            io.yc?.advanced(by: o).update(from: cs + bi * h, count: h)
        }
    }

    /// X·W + Wb + Rb for `rows` (step · batch + row, in time order) of direction `d`.
    private func inputProducts(_ d: Int, rows: Range<Int>) {
        guard let x = io.x else { return }
        let g = gates, wd = UnsafePointer(w + d * input * g), bd = UnsafePointer(bias + d * g), xw = buffers(d).xw
        for row in rows {
            let t = row / batch, bi = row % batch
            let xr = x + (batchMajor ? bi * seq + t : row) * input
            let out = xw + row * g
            out.update(from: bd, count: g)
            for k in 0..<input { Self.axpy(g, xr[k], wd + k * g, out) }
        }
    }

    /// The step's time index for row `bi` (a backward direction reads each row's steps from its end).
    @inline(__always) private func time(_ d: Int, step s: Int, row bi: Int) -> Int { reverse || d == 1 ? lengths[bi] - 1 - s : s }

    /// Pre-activations of `units` of every live row at step `s`: X·W + biases + H·R.
    private func stateProducts(_ d: Int, step s: Int, units: Range<Int>) {
        let g = gates, h = hidden, rd = UnsafePointer(r + d * h * g)
        let (xw, pre, hs, _) = buffers(d)
        for bi in 0..<batch where s < lengths[bi] {
            let t = time(d, step: s, row: bi)
            let row = pre + bi * g, source = xw + (t * batch + bi) * g, hRow = hs + bi * h
            for gate in 0..<4 {
                let base = gate * h + units.lowerBound
                (row + base).update(from: source + base, count: units.count)
            }
            // H·R over the whole previous state: the units only split the columns.
            for k in 0..<h {
                let a = hRow[k]
                for gate in 0..<4 {
                    let base = gate * h + units.lowerBound
                    Self.axpy(units.count, a, rd + k * g + base, row + base)
                }
            }
        }
    }

    /// The gates, cell and hidden state of `units` of every live row at step `s`.
    private func cells(_ d: Int, step s: Int, units: Range<Int>) {
        let g = gates, h = hidden
        let (_, pre, hs, cs) = buffers(d)
        let peep = peepholes.map { UnsafePointer($0 + d * 3 * h) }
        for bi in 0..<batch where s < lengths[bi] {
            let t = time(d, step: s, row: bi)
            let row = pre + bi * g, hRow = hs + bi * h, cRow = cs + bi * h
            for j in units {
                let cp = cRow[j]
                var gi = row[j], go = row[h + j], gf = row[2 * h + j]
                let gc = row[3 * h + j]
                if let peep {
                    gi += peep[j] * cp
                    gf += peep[2 * h + j] * cp
                }
                let i = Self.sigmoid(Self.clipped(gi, clip))
                let f = inputForget ? 1 - i : Self.sigmoid(Self.clipped(gf, clip))
                let c = f * cp + i * tanhf(Self.clipped(gc, clip))
                if let peep { go += peep[h + j] * c }
                let value = Self.sigmoid(Self.clipped(go, clip)) * tanhf(c)
                cRow[j] = c
                hRow[j] = value
                if let y = io.y {
                    y[(batchMajor ? (bi * seq + t) * directions + d : (t * directions + d) * batch + bi) * h + j] = value
                }
            }
        }
    }

    @inline(__always) static func clipped(_ v: Float, _ clip: Float?) -> Float {
        guard let clip else { return v }
        return min(max(v, -clip), clip)
    }

    @inline(__always) static func sigmoid(_ v: Float) -> Float { 1 / (1 + expf(-v)) }

    /// y[0..<n] += a · x[0..<n].
    @inline(__always) static func axpy(_ n: Int, _ a: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
        for j in 0..<n { y[j] += a * x[j] }
    }
}
