import AnvilCore

/// Reference kernel for NonMaxSuppression.
public enum Detection {
    /// Greedy per-class suppression. Boxes are [batch, n, 4] as corners (y1, x1, y2, x2,
    /// in any order) or, with `centerPointBox`, as (x centre, y centre, width, height).
    /// Returns selected (batch, class, box) triples as int64 [k, 3].
    /// A candidate's place in NonMaxSuppression's order: descending score, then ascending
    /// index; NaN after every number. The score is mapped to an integer ordered as the
    /// doubles are (−0 as +0), so sorting compares integers.
    struct ScoreOrder: Comparable {
        let key: UInt64, index: Int

        init(score: Double, index: Int) {
            let bits = (score == 0 ? 0 : score).bitPattern
            let ascending = bits >> 63 == 1 ? ~bits : bits | 1 << 63
            key = score.isNaN ? .max : ~ascending
            self.index = index
        }

        static func < (a: ScoreOrder, b: ScoreOrder) -> Bool { a.key != b.key ? a.key < b.key : a.index < b.index }
    }

    public static func nonMaxSuppression(boxes: Tensor, scores: Tensor, maxPerClass: Int, iouThreshold: Double,
                                         scoreThreshold: Double?, centerPointBox: Bool) throws -> Tensor {
        guard boxes.rank == 3, boxes.shape[2] == 4, scores.rank == 3, scores.shape[0] == boxes.shape[0], scores.shape[2] == boxes.shape[1] else {
            throw AnvilError.invalidTensor(name: "NonMaxSuppression", reason: "boxes \(boxes.shape) and scores \(scores.shape) must be [b, n, 4] and [b, c, n]")
        }
        let (batches, classes, n) = (scores.shape[0], scores.shape[1], scores.shape[2])
        let bv = boxes.doubles, sv = scores.doubles
        var selected: [Int64] = []
        guard maxPerClass > 0 else { return try Tensor(int64s: [], shape: [0, 3]) }
        // Each box's corners (x1, y1, x2, y2) and area, computed once per batch.
        var box = [SIMD4<Double>](repeating: .zero, count: n), area = [Double](repeating: 0, count: n)
        var kept: [Int] = [], byLeft: [Int] = []
        kept.reserveCapacity(min(n, maxPerClass))
        byLeft.reserveCapacity(min(n, maxPerClass))
        /// The first position in `order` (box indices by left edge) whose box's left edge is not below `x`.
        func lowerBound(_ order: [Int], _ x: Double, _ box: [SIMD4<Double>]) -> Int {
            var (lo, hi) = (0, order.count)
            while lo < hi {
                let mid = (lo + hi) / 2
                if box[order[mid]].x < x { lo = mid + 1 } else { hi = mid }
            }
            return lo
        }
        for b in 0..<batches {
            for i in 0..<n {
                let o = (b * n + i) * 4
                let corners: SIMD4<Double>
                if centerPointBox {
                    let (xc, yc, w, h) = (bv[o], bv[o + 1], bv[o + 2], bv[o + 3])
                    corners = SIMD4(xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2)
                } else {
                    let (y1, x1, y2, x2) = (bv[o], bv[o + 1], bv[o + 2], bv[o + 3])
                    corners = SIMD4(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
                }
                box[i] = corners
                area[i] = (corners.z - corners.x) * (corners.w - corners.y)
            }
            for c in 0..<classes {
                let base = (b * classes + c) * n
                // Candidates by descending score, ties by index (NaN scores last), sorted as integer keys.
                var order: [ScoreOrder] = []
                order.reserveCapacity(n)
                for i in 0..<n where scoreThreshold == nil || sv[base + i] > scoreThreshold! { order.append(ScoreOrder(score: sv[base + i], index: i)) }
                order.sort()
                let candidates = order.lazy.map(\.index)
                kept.removeAll(keepingCapacity: true)
                byLeft.removeAll(keepingCapacity: true)
                var widest = 0.0
                for i in candidates {
                    if kept.count >= maxPerClass { break }
                    let a = box[i], areaA = area[i]
                    var suppressed = false
                    if areaA > 0 {
                        // Only kept boxes overlapping along x can suppress: their left edges lie in
                        // (a.x1 − the widest kept box, a.x2). Kept boxes are ordered by left edge, so
                        // that range is found by two binary searches (boxes of other classes, shifted
                        // apart by torchvision's batched NMS, are never visited).
                        let from = lowerBound(byLeft, a.x - widest, box), to = lowerBound(byLeft, a.z, box)
                        var j = from
                        while j < to {
                            let k = byLeft[j], q = box[k]
                            j += 1
                            let ix = min(a.z, q.z) - max(a.x, q.x), iy = min(a.w, q.w) - max(a.y, q.y)
                            guard ix > 0, iy > 0, area[k] > 0 else { continue }
                            let inter = ix * iy, union = areaA + area[k] - inter
                            if union > 0, inter / union > iouThreshold { suppressed = true; break }
                        }
                    }
                    if !suppressed {
                        kept.append(i)
                        // A box with a NaN corner overlaps nothing (its comparisons are false): not ordered.
                        let a = box[i]
                        if !(a.x.isNaN || a.y.isNaN || a.z.isNaN || a.w.isNaN) {
                            byLeft.insert(i, at: lowerBound(byLeft, a.x, box))
                            widest = max(widest, a.z - a.x)
                        }
                    }
                }
                for i in kept { selected += [Int64(b), Int64(c), Int64(i)] }
            }
        }
        return try Tensor(int64s: selected, shape: [selected.count / 3, 3])
    }
}

/// RoiAlign's attributes with the ONNX defaults, checked once for the reference and
/// the fast kernel.
public struct RoiAlignParameters: Sendable, Equatable {
    public enum Mode: Sendable { case average, max }
    public var mode: Mode
    public var outputHeight: Int
    public var outputWidth: Int
    /// Sample points per bin along each axis; 0 means ceil(roi size / output size).
    public var samplingRatio: Int
    public var spatialScale: Float
    /// half_pixel shifts the scaled corners by -0.5 (opset 16's default); output_half_pixel
    /// does not and makes every roi at least 1x1 (opset 10's only behaviour, torchvision's
    /// aligned=False).
    public var halfPixel: Bool

    /// Reads and checks the attributes of a RoiAlign node of `opset`.
    public init(_ a: AttributeReader, opset: Int) throws {
        func fail(_ reason: String) -> AnvilError { .invalidNode(node: a.nodeName, op: a.opType, reason: reason) }
        switch try a.string("mode", "avg") {
        case "avg": mode = .average
        case "max": mode = .max
        case let other: throw fail("mode '\(other)' is not avg or max")
        }
        outputHeight = try a.int("output_height", 1)
        outputWidth = try a.int("output_width", 1)
        guard outputHeight > 0, outputWidth > 0 else { throw fail("output_height \(outputHeight) and output_width \(outputWidth) must be positive") }
        samplingRatio = try a.int("sampling_ratio", 0)
        guard samplingRatio >= 0, samplingRatio <= Self.maximumGrid else {
            throw fail("sampling_ratio \(samplingRatio) is outside 0...\(Self.maximumGrid)")
        }
        spatialScale = try a.float("spatial_scale", 1)
        guard spatialScale.isFinite else { throw fail("spatial_scale \(spatialScale) is not finite") }
        let transform = opset >= 16 ? try a.string("coordinate_transformation_mode", "half_pixel") : "output_half_pixel"
        guard ["half_pixel", "output_half_pixel"].contains(transform) else {
            throw fail("coordinate_transformation_mode '\(transform)' is not half_pixel or output_half_pixel")
        }
        halfPixel = transform == "half_pixel"
    }

    /// The largest sampling grid per bin axis (an adaptive grid follows the roi's size, which
    /// a damaged or hostile rois tensor can make arbitrarily large; a grid of n × n samples
    /// costs n² bilinear reads per bin: 1024 bounds one bin to a million). Real detectors
    /// ask for 2 or an adaptive grid of a few dozen.
    public static let maximumGrid = 1 << 10

    /// One roi's geometry in the feature map: its scaled start, bin size and sampling grid.
    public struct Roi<T: BinaryFloatingPoint> {
        public var startY: T, startX: T, binHeight: T, binWidth: T
        public var gridHeight: Int, gridWidth: Int
        /// The divisor of the average: grid points per bin, at least 1.
        public var count: T { T(max(gridHeight * gridWidth, 1)) }
    }

    /// The geometry of roi `(x1, y1, x2, y2)`; throws for non-finite corners or a grid over `maximumGrid`.
    public func roi<T: BinaryFloatingPoint>(_ x1: T, _ y1: T, _ x2: T, _ y2: T, index: Int) throws -> Roi<T> {
        let scale = T(spatialScale), offset: T = halfPixel ? 0.5 : 0
        let startX = x1 * scale - offset, startY = y1 * scale - offset
        var width = x2 * scale - offset - startX, height = y2 * scale - offset - startY
        guard width.isFinite, height.isFinite else {
            throw AnvilError.invalidTensor(name: "RoiAlign", reason: "roi \(index) (\(x1), \(y1), \(x2), \(y2)) is not finite")
        }
        if !halfPixel { width = max(width, 1); height = max(height, 1) }
        let binHeight = height / T(outputHeight), binWidth = width / T(outputWidth)
        func grid(_ bin: T) throws -> Int {
            if samplingRatio > 0 { return samplingRatio }
            let g = bin.rounded(.up)
            guard g <= T(Self.maximumGrid) else {
                throw AnvilError.invalidTensor(name: "RoiAlign", reason: "roi \(index) (\(x1), \(y1), \(x2), \(y2)) needs \(g) samples per bin axis, over \(Self.maximumGrid): give a sampling_ratio")
            }
            return g > 0 ? Int(g) : 0
        }
        return Roi(startY: startY, startX: startX, binHeight: binHeight, binWidth: binWidth, gridHeight: try grid(binHeight), gridWidth: try grid(binWidth))
    }

    /// Checks RoiAlign's input shapes: X [N, C, H, W], rois [R, 4], batch_indices [R].
    public func check(x: [Int], rois: [Int], batchIndices: [Int]) throws {
        guard x.count == 4 else { throw AnvilError.invalidTensor(name: "RoiAlign", reason: "X must be 4-D [N, C, H, W], got \(x)") }
        guard rois.count == 2, rois[1] == 4 else { throw AnvilError.invalidTensor(name: "RoiAlign", reason: "rois must be [num_rois, 4], got \(rois)") }
        guard batchIndices == [rois[0]] else {
            throw AnvilError.invalidTensor(name: "RoiAlign", reason: "batch_indices must be [\(rois[0])] (one per roi), got \(batchIndices)")
        }
        guard rois[0] == 0 || (x[2] > 0 && x[3] > 0) else {
            throw AnvilError.invalidTensor(name: "RoiAlign", reason: "X \(x) has an empty feature map to sample \(rois[0]) rois from")
        }
    }
}

/// One bilinear sample of RoiAlign: four feature-map offsets and their weights.
public struct BilinearSample<T: BinaryFloatingPoint> {
    public var offsets: (Int, Int, Int, Int)
    public var weights: (T, T, T, T)

    /// The sample at (y, x) of an h × w map: nothing (weights 0) outside [-1, h] × [-1, w]
    /// (NaN included), the border value beyond the last row or column.
    public init(y yIn: T, x xIn: T, height h: Int, width w: Int) {
        guard yIn >= -1, yIn <= T(h), xIn >= -1, xIn <= T(w) else {
            offsets = (0, 0, 0, 0)
            weights = (0, 0, 0, 0)
            return
        }
        var y = max(yIn, 0), x = max(xIn, 0)
        var y0 = Int(y), x0 = Int(x), y1 = y0 + 1, x1 = x0 + 1
        if y0 >= h - 1 { y0 = h - 1; y1 = y0; y = T(y0) }
        if x0 >= w - 1 { x0 = w - 1; x1 = x0; x = T(x0) }
        let ly = y - T(y0), lx = x - T(x0), hy = 1 - ly, hx = 1 - lx
        offsets = (y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1)
        weights = (hy * hx, hy * lx, ly * hx, ly * lx)
    }
}

extension Detection {
    /// RoiAlign: for each roi, an output_height × output_width grid of bins over X[batch
    /// index], each the average (or maximum) of bilinear samples on a regular grid in the
    /// bin. As ONNX Runtime and onnx.reference compute it, the maximum is taken over every
    /// sample of the four weighted corner values, not over interpolated values.
    public static func roiAlign(_ x: Tensor, rois: Tensor, batchIndices: Tensor, _ p: RoiAlignParameters) throws -> Tensor {
        try p.check(x: x.shape, rois: rois.shape, batchIndices: batchIndices.shape)
        guard x.dataType.isFloatingPoint, rois.dataType == x.dataType else {
            throw AnvilError.invalidTensor(name: "RoiAlign", reason: "X and rois must have one floating-point type, got \(x.dataType) and \(rois.dataType)")
        }
        let y = x.dataType == .double ? try roiAlign(x, rois, batchIndices, p, as: Double.self) : try roiAlign(x, rois, batchIndices, p, as: Float.self)
        return try Tensor(x.dataType, shape: [rois.shape[0], x.shape[1], p.outputHeight, p.outputWidth], doubles: y)
    }

    static func roiAlign<T: BinaryFloatingPoint>(_ x: Tensor, _ rois: Tensor, _ batchIndices: Tensor, _ p: RoiAlignParameters, as: T.Type) throws -> [Double] {
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let data = x.doubles.map { T($0) }, boxes = rois.doubles.map { T($0) }, batches = batchIndices.int64s
        let (oh, ow) = (p.outputHeight, p.outputWidth)
        var y = [Double](repeating: 0, count: try MemoryPolicy.checkedCount([rois.shape[0], c, oh, ow], .double, for: "RoiAlign's output"))
        for r in 0..<rois.shape[0] {
            guard batches[r] >= 0, batches[r] < n else {
                throw AnvilError.invalidTensor(name: "RoiAlign", reason: "batch_indices[\(r)] = \(batches[r]) is outside [0, \(n - 1)] (X has \(n) images)")
            }
            let roi = try p.roi(boxes[4 * r], boxes[4 * r + 1], boxes[4 * r + 2], boxes[4 * r + 3], index: r)
            for ch in 0..<c {
                let plane = (Int(batches[r]) * c + ch) * h * w
                for py in 0..<oh {
                    for px in 0..<ow {
                        var total: T = 0, largest: T? = nil
                        for iy in 0..<roi.gridHeight {
                            let sy = roi.startY + T(py) * roi.binHeight + (T(iy) + 0.5) * roi.binHeight / T(roi.gridHeight)
                            for ix in 0..<roi.gridWidth {
                                let sx = roi.startX + T(px) * roi.binWidth + (T(ix) + 0.5) * roi.binWidth / T(roi.gridWidth)
                                let s = BilinearSample(y: sy, x: sx, height: h, width: w)
                                let v = (s.weights.0 * data[plane + s.offsets.0], s.weights.1 * data[plane + s.offsets.1],
                                         s.weights.2 * data[plane + s.offsets.2], s.weights.3 * data[plane + s.offsets.3])
                                switch p.mode {
                                case .average: total += v.0 + v.1 + v.2 + v.3
                                case .max:
                                    let m = max(max(max(v.0, v.1), v.2), v.3)
                                    largest = largest.map { max($0, m) } ?? m
                                }
                            }
                        }
                        y[((r * c + ch) * oh + py) * ow + px] = Double(p.mode == .average ? total / roi.count : largest ?? 0)
                    }
                }
            }
        }
        return y
    }
}
