import AnvilCore
import Foundation

/// RoiAlign on arena memory, reading the feature map in its own channel layout (plain,
/// channels last or channel-blocked). Each bilinear sample is located once and applied
/// to every channel; each output element sums its samples in the reference kernel's
/// order, so the results equal `Detection.roiAlign` in Float whatever the thread count.
enum SwiftRoiAlign {
    /// Where the channels of one pixel lie: `runs` runs of up to `lanes` consecutive
    /// channels, run `k` of image `b` starting at `runBase(b, k)`, pixels `pixelStride` apart.
    struct Addressing: Sendable {
        let lanes: Int, runs: Int, pixelStride: Int
        let runStride: Int, imageStride: Int

        init?(_ layout: Layout, c: Int, pixels: Int) {
            switch layout {
            case .plain: (lanes, runs, pixelStride, runStride, imageStride) = (1, c, 1, pixels, c * pixels)
            case .channelsLast: (lanes, runs, pixelStride, runStride, imageStride) = (c, 1, c, 0, pixels * c)
            case .blocked8, .blocked16:
                let block = layout.channelBlock!, blocks = (c + block - 1) / block
                (lanes, runs, pixelStride, runStride, imageStride) = (block, blocks, block, pixels * block, blocks * pixels * block)
            case .preferred, .opaque: return nil
            }
        }

        func runBase(_ b: Int, _ k: Int) -> Int { b * imageStride + k * runStride }
    }

    /// Shapes and attributes of one layer.
    struct Problem: Sendable {
        let layer: String
        let n: Int, c: Int, h: Int, w: Int, rois: Int
        let parameters: RoiAlignParameters
        let addressing: Addressing
        let wideIndices: Bool
    }

    /// Roi `r`'s batch index.
    static func batchIndex(_ p: Problem, _ indices: UnsafeRawPointer, _ r: Int) -> Int {
        p.wideIndices ? Int(indices.load(fromByteOffset: 8 * r, as: Int64.self)) : Int(indices.load(fromByteOffset: 4 * r, as: Int32.self))
    }

    /// Checks every roi's batch index and geometry, naming the layer.
    static func check(_ p: Problem, rois: UnsafePointer<Float>, indices: UnsafeRawPointer) throws {
        for r in 0..<p.rois {
            let b = batchIndex(p, indices, r)
            guard b >= 0, b < p.n else {
                throw AnvilError.invalidNode(node: p.layer, op: "RoiAlign", reason: "batch_indices[\(r)] = \(b) is outside [0, \(p.n - 1)] (X has \(p.n) images)")
            }
            do {
                _ = try p.parameters.roi(rois[4 * r], rois[4 * r + 1], rois[4 * r + 2], rois[4 * r + 3], index: r)
            } catch AnvilError.invalidTensor(_, let reason) {
                throw AnvilError.invalidNode(node: p.layer, op: "RoiAlign", reason: reason)
            }
        }
    }

    /// Y [rois, C, output_height, output_width] (plain). `scratch` holds one channel
    /// accumulator row (C floats, rounded up to the run length) per core.
    static func run(_ p: Problem, x: UnsafePointer<Float>, rois: UnsafePointer<Float>, indices: UnsafeRawPointer,
                    into y: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>) throws {
        try check(p, rois: rois, indices: indices)
        guard p.rois > 0, p.c > 0 else { return }
        let cells = p.parameters.outputHeight * p.parameters.outputWidth
        // The scratch holds one accumulator row per processor (`DetectionLowering`).
        let parts = min(p.rois, p.rois * p.c * cells >= 1 << 14 ? min(Parallel.threads, ProcessInfo.processInfo.activeProcessorCount) : 1)
        let row = scratchRow(c: p.c, addressing: p.addressing)
        nonisolated(unsafe) let (source, boxes, batches, target, accumulators) = (x, rois, indices, y, scratch)
        Parallel.forEach(parts) { part in
            for r in (p.rois * part / parts)..<(p.rois * (part + 1) / parts) {
                pool(p, roi: r, batch: batchIndex(p, batches, r), x: source, rois: boxes, into: target, accumulator: accumulators + part * row)
            }
        }
    }

    /// RoiAlign of plain tensors (the layer interpreter's fast path); nil when they are
    /// not float maps and rois with [R, 4] rois and [R] batch indices.
    static func run(_ parameters: RoiAlignParameters, layer: String, x: Tensor, rois: Tensor, batchIndices: Tensor) throws -> Tensor? {
        guard x.dataType == .float, x.rank == 4, rois.dataType == .float, rois.rank == 2, rois.shape[1] == 4,
              batchIndices.shape == [rois.shape[0]], batchIndices.dataType == .int64 || batchIndices.dataType == .int32 else { return nil }
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]), count = rois.shape[0]
        // Channels last: each sample then reads its channels as one contiguous run (vectorized).
        guard h > 0, w > 0, let addressing = Addressing(.channelsLast, c: c, pixels: h * w) else { return nil }
        let problem = Problem(layer: layer, n: n, c: c, h: h, w: w, rois: count, parameters: parameters, addressing: addressing, wideIndices: true)
        let (data, boxes, indices) = (try Movement.transpose(x, perm: [0, 2, 3, 1]).floats, rois.floats, batchIndices.int64s)
        var scratch = [Float](repeating: 0, count: scratchRow(c: c, addressing: addressing) * ProcessInfo.processInfo.activeProcessorCount)
        var y = [Float](repeating: 0, count: try MemoryPolicy.checkedCount([count, c, parameters.outputHeight, parameters.outputWidth], .float, for: "RoiAlign's output"))
        try data.withUnsafeBufferPointer { xp in
            try boxes.withUnsafeBufferPointer { rp in
                try indices.withUnsafeBytes { ip in
                    try y.withUnsafeMutableBufferPointer { yp in
                        try scratch.withUnsafeMutableBufferPointer { sp in
                            guard let xb = xp.baseAddress, let rb = rp.baseAddress, let ib = ip.baseAddress, let yb = yp.baseAddress, let sb = sp.baseAddress else { return }
                            try run(problem, x: xb, rois: rb, indices: ib, into: yb, scratch: sb)
                        }
                    }
                }
            }
        }
        return try Tensor(floats: y, shape: [count, c, parameters.outputHeight, parameters.outputWidth])
    }

    /// Floats of scratch one core needs.
    static func scratchRow(c: Int, addressing a: Addressing) -> Int { a.runs * a.lanes }

    /// Every bin of roi `r` for all channels.
    static func pool(_ p: Problem, roi r: Int, batch b: Int, x: UnsafePointer<Float>, rois: UnsafePointer<Float>,
                     into y: UnsafeMutablePointer<Float>, accumulator acc: UnsafeMutablePointer<Float>) {
        let q = p.parameters, a = p.addressing
        guard let roi = try? q.roi(rois[4 * r], rois[4 * r + 1], rois[4 * r + 2], rois[4 * r + 3], index: r) else { return }
        let average = q.mode == .average, channelsPadded = a.runs * a.lanes
        let (oh, ow) = (q.outputHeight, q.outputWidth)
        for py in 0..<oh {
            for px in 0..<ow {
                for ch in 0..<channelsPadded { acc[ch] = 0 }
                var first = true
                for iy in 0..<roi.gridHeight {
                    let sy = roi.startY + Float(py) * roi.binHeight + (Float(iy) + 0.5) * roi.binHeight / Float(roi.gridHeight)
                    for ix in 0..<roi.gridWidth {
                        let sx = roi.startX + Float(px) * roi.binWidth + (Float(ix) + 0.5) * roi.binWidth / Float(roi.gridWidth)
                        let s = BilinearSample(y: sy, x: sx, height: p.h, width: p.w)
                        let (w0, w1, w2, w3) = s.weights
                        let (o0, o1, o2, o3) = (s.offsets.0 * a.pixelStride, s.offsets.1 * a.pixelStride, s.offsets.2 * a.pixelStride, s.offsets.3 * a.pixelStride)
                        for k in 0..<a.runs {
                            let base = x + a.runBase(b, k), out = acc + k * a.lanes
                            if average {
                                for lane in 0..<a.lanes {
                                    out[lane] += w0 * base[o0 + lane] + w1 * base[o1 + lane] + w2 * base[o2 + lane] + w3 * base[o3 + lane]
                                }
                            } else {
                                for lane in 0..<a.lanes {
                                    let m = max(max(max(w0 * base[o0 + lane], w1 * base[o1 + lane]), w2 * base[o2 + lane]), w3 * base[o3 + lane])
                                    out[lane] = first ? m : max(out[lane], m)
                                }
                            }
                        }
                        first = false
                    }
                }
                let count = roi.count, cell = py * ow + px
                for ch in 0..<p.c {
                    y[(r * p.c + ch) * oh * ow + cell] = average ? acc[ch] / count : acc[ch]
                }
            }
        }
    }
}
