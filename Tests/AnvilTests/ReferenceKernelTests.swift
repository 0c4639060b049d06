import AnvilCore
import AnvilKernels
import XCTest

/// The fast-ish reference kernels (im2col + sgemm) against direct loops written
/// straight from the ONNX definitions, over many random shapes.
final class ReferenceKernelTests: XCTestCase {
    func randomTensor(_ shape: [Int], _ rng: inout SeededGenerator) throws -> Tensor {
        try Tensor(floats: (0..<shape.reduce(1, *)).map { _ in Float.random(in: -1...1, using: &rng) }, shape: shape)
    }

    /// Direct convolution, one output element at a time (2-D).
    func directConv(_ x: Tensor, _ w: Tensor, _ b: Tensor?, strides: [Int], dilations: [Int], pads: [Int], group: Int) -> [Float] {
        let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let (m, kh, kw) = (w.shape[0], w.shape[2], w.shape[3])
        let oh = (h + pads[0] + pads[2] - ((kh - 1) * dilations[0] + 1)) / strides[0] + 1
        let ow = (wd + pads[1] + pads[3] - ((kw - 1) * dilations[1] + 1)) / strides[1] + 1
        let xs = x.floats, ws = w.floats, bs = b?.floats
        let cg = c / group, mg = m / group
        var out: [Float] = []
        for bn in 0..<n { for oc in 0..<m { for oy in 0..<oh { for ox in 0..<ow {
            var acc: Double = Double(bs?[oc] ?? 0)
            let g = oc / mg
            for ic in 0..<cg { for ky in 0..<kh { for kx in 0..<kw {
                let iy = oy * strides[0] - pads[0] + ky * dilations[0], ix = ox * strides[1] - pads[1] + kx * dilations[1]
                guard iy >= 0, iy < h, ix >= 0, ix < wd else { continue }
                acc += Double(xs[((bn * c + g * cg + ic) * h + iy) * wd + ix]) * Double(ws[((oc * cg + ic) * kh + ky) * kw + kx])
            } } }
            out.append(Float(acc))
        } } } }
        _ = mg
        return out
    }

    func testConvMatchesDirectLoopsOnRandomShapes() throws {
        var rng = SeededGenerator(seed: 7)
        for _ in 0..<60 {
            let group = [1, 1, 2, 4].randomElement(using: &rng)!
            let c = group * Int.random(in: 1...3, using: &rng), m = group * Int.random(in: 1...3, using: &rng)
            let kh = Int.random(in: 1...3, using: &rng), kw = Int.random(in: 1...3, using: &rng)
            let strides = [Int.random(in: 1...2, using: &rng), Int.random(in: 1...2, using: &rng)]
            let dilations = [Int.random(in: 1...2, using: &rng), Int.random(in: 1...2, using: &rng)]
            let pads = (0..<4).map { _ in Int.random(in: 0...2, using: &rng) }
            let h = Int.random(in: (kh - 1) * dilations[0] + 1...9, using: &rng), w = Int.random(in: (kw - 1) * dilations[1] + 1...9, using: &rng)
            let x = try randomTensor([Int.random(in: 1...2, using: &rng), c, h, w], &rng)
            let weight = try randomTensor([m, c / group, kh, kw], &rng)
            let bias = Bool.random(using: &rng) ? try randomTensor([m], &rng) : nil
            let g = try WindowGeometry(input: [h, w], kernel: [kh, kw], strides: strides, dilations: dilations, pads: pads, autoPad: .notSet)
            let y = try Linear.conv(x, weight, bias, geometry: g, group: group)
            let expected = directConv(x, weight, bias, strides: strides, dilations: dilations, pads: pads, group: group)
            XCTAssertEqual(y.count, expected.count)
            for (a, e) in zip(y.floats, expected) { XCTAssertEqual(a, e, accuracy: 1e-4) }
        }
    }

    func testMatMulMatchesDirectLoopsWithBroadcastBatches() throws {
        var rng = SeededGenerator(seed: 11)
        for _ in 0..<40 {
            let m = Int.random(in: 1...9, using: &rng), k = Int.random(in: 1...9, using: &rng), n = Int.random(in: 1...70, using: &rng)
            let batchA = Bool.random(using: &rng) ? [3] : [1], batchB = [3]
            let a = try randomTensor(batchA + [m, k], &rng), b = try randomTensor(batchB + [k, n], &rng)
            let y = try Linear.matmul(a, b)
            XCTAssertEqual(y.shape, [3, m, n])
            let av = a.floats, bv = b.floats, yv = y.floats
            for t in 0..<3 { for i in 0..<m { for j in 0..<n {
                var acc = 0.0
                let ta = batchA[0] == 1 ? 0 : t
                for p in 0..<k { acc += Double(av[(ta * m + i) * k + p]) * Double(bv[(t * k + p) * n + j]) }
                XCTAssertEqual(yv[(t * m + i) * n + j], Float(acc), accuracy: 1e-4)
            } } }
        }
    }

    func testBroadcastingFollowsNumPy() throws {
        let a = try Tensor(floats: [1, 2, 3], shape: [3, 1])
        let b = try Tensor(floats: [10, 20], shape: [2])
        let y = try Elementwise.arithmetic(a, b, op: "Add", float: +, integer: &+)
        XCTAssertEqual(y.shape, [3, 2])
        XCTAssertEqual(y.floats, [11, 21, 12, 22, 13, 23])
        XCTAssertThrowsError(try Elementwise.arithmetic(a, try Tensor(floats: [1, 2], shape: [2, 1]), op: "Add", float: +, integer: &+))
    }

    /// The index helpers behind transpose, broadcast, gather and scatter against direct
    /// per-element loops, over random shapes with size-1 and empty dimensions and scalars.
    func testIndexHelpersMatchDirectLoops() throws {
        var rng = SeededGenerator(seed: 17)
        for _ in 0..<200 {
            let rank = Int.random(in: 0...4, using: &rng)
            let shape = (0..<rank).map { _ in Int.random(in: 0...4, using: &rng) }
            let strides = (0..<rank).map { _ in Int.random(in: 0...9, using: &rng) }
            var expected: [Int] = []
            Indexing.forEachIndex(shape) { index in expected.append(zip(index, strides).reduce(0) { $0 + $1.0 * $1.1 }) }
            if rank == 0 { expected = [0] }
            XCTAssertEqual(Indexing.stridedPositions(shape, strides: strides), expected, "\(shape) \(strides)")
            // Transpose by a random permutation, and NonZero, against direct loops.
            let n = shape.reduce(1, *)
            let x = try Tensor(floats: (0..<n).map { _ in Float(Int.random(in: -2...2, using: &rng)) }, shape: shape)
            let perm = Array(0..<rank).shuffled(using: &rng)
            let t = try Movement.transpose(x, perm: perm)
            XCTAssertEqual(t.shape, perm.map { shape[$0] })
            let xs = ShapeMath.strides(shape)
            var direct: [Float] = []
            Indexing.forEachIndex(t.shape) { o in
                var source = 0
                for (d, p) in perm.enumerated() { source += o[d] * xs[p] }
                direct.append(x.floats[source])
            }
            if rank == 0 { direct = x.floats }
            XCTAssertEqual(t.floats, direct, "\(shape) \(perm)")
            let nz = try Movement.nonZero(try Tensor(bools: x.floats.map { $0 != 0 }, shape: shape))
            var coordinates: [[Int64]] = []
            Indexing.forEachIndex(shape) { index in
                var flat = 0
                for d in 0..<rank { flat += index[d] * xs[d] }
                if x.floats[flat] != 0 { coordinates.append(index.map { Int64($0) }) }
            }
            XCTAssertEqual(nz.shape, [rank, rank == 0 ? (x.floats[0] != 0 ? 1 : 0) : coordinates.count])
            if rank > 0 {
                for (j, c) in coordinates.enumerated() { XCTAssertEqual((0..<rank).map { nz.int64s[$0 * coordinates.count + j] }, c) }
            }
        }
        let table = try Tensor(int64s: (0..<10).map { Int64($0) }, shape: [10])
        XCTAssertEqual(try table.gatheringBlocks(at: [7, 2], size: 3, shape: [2, 3]).int64s, [7, 8, 9, 2, 3, 4])
        XCTAssertEqual(try table.gatheringBlocks(at: [], size: 3, shape: [0, 3]).count, 0)
        XCTAssertThrowsError(try table.gatheringBlocks(at: [8], size: 3, shape: [3]), "a block past the end")
        // Broadcasts as strided views: a column along rows, a row repeated, a scalar.
        let column = try Tensor(floats: [1, 2], shape: [2, 1])
        XCTAssertEqual(try Indexing.broadcast(column, to: [3, 2, 3]).floats, [1, 1, 1, 2, 2, 2, 1, 1, 1, 2, 2, 2, 1, 1, 1, 2, 2, 2])
        XCTAssertEqual(try Indexing.broadcast(try Tensor(floats: [1, 2, 3], shape: [3]), to: [2, 3]).floats, [1, 2, 3, 1, 2, 3])
        XCTAssertEqual(try Indexing.broadcast(try Tensor(floats: [4], shape: []), to: [2, 2]).floats, [4, 4, 4, 4])
        XCTAssertThrowsError(try column.strided(shape: [3], strides: [1]), "reads past the end")
        XCTAssertThrowsError(try column.strided(shape: [2], strides: [-1]))
        let filled = try Tensor(.int64, shape: [], int64s: [5]).repeated(shape: [2, 3])
        XCTAssertEqual(filled.int64s, [5, 5, 5, 5, 5, 5])
        let replaced = try Tensor(floats: [0, 1, 2, 3, 4, 5], shape: [2, 3]).replacing(blocksAt: [4, 0], block: 2, with: try Tensor(floats: [9, 8, 7, 6], shape: [4]))
        XCTAssertEqual(replaced.floats, [7, 6, 2, 3, 9, 8])
        XCTAssertThrowsError(try Tensor(floats: [0, 1], shape: [2]).replacing(blocksAt: [0], block: 1, with: try Tensor(int64s: [1], shape: [1])))
        XCTAssertThrowsError(try Tensor(floats: [0, 1], shape: [2]).replacing(blocksAt: [1], block: 2, with: try Tensor(floats: [1, 2], shape: [2])), "a block past the end")
        // ScatterElements whose indices do not fit the data (larger off the axis, another rank) is refused.
        let data = try Tensor(floats: [0, 0, 0, 0], shape: [2, 2])
        XCTAssertThrowsError(try Movement.scatterElements(data, indices: try Tensor(int64s: [0, 0, 0, 0, 0, 0], shape: [3, 2]),
                                                         updates: try Tensor(floats: [1, 2, 3, 4, 5, 6], shape: [3, 2]), axis: 1, reduction: "none"))
        XCTAssertThrowsError(try Movement.scatterElements(data, indices: try Tensor(int64s: [0, 0, 0, 0, 0], shape: [5]),
                                                         updates: try Tensor(floats: [1, 2, 3, 4, 5], shape: [5]), axis: 0, reduction: "none"))
    }

    func testWindowGeometryAutoPadAndCeilMode() throws {
        let same = try WindowGeometry(input: [7], kernel: [3], strides: [2], dilations: nil, pads: nil, autoPad: .sameUpper)
        XCTAssertEqual(same.output, [4])
        XCTAssertEqual(same.padsBegin + same.padsEnd, [1, 1])
        let lower = try WindowGeometry(input: [6], kernel: [4], strides: [1], dilations: nil, pads: nil, autoPad: .sameLower)
        XCTAssertEqual(lower.padsBegin + lower.padsEnd, [2, 1])
        let ceil = try WindowGeometry(input: [6], kernel: [3], strides: [2], dilations: nil, pads: [0, 0], autoPad: .notSet, ceilMode: true)
        XCTAssertEqual(ceil.output, [3])
        XCTAssertThrowsError(try WindowGeometry(input: [6], kernel: [3], strides: [0], dilations: nil, pads: nil, autoPad: .notSet))
    }
}

extension ReferenceKernelTests {
    /// NonMaxSuppression visits only kept boxes that overlap along x (found by binary search
    /// over their left edges): the same selection as checking every kept box, on random
    /// boxes with torchvision's class offsets, duplicates, degenerate and NaN boxes.
    /// Candidates go by descending score, equal scores (−0 and +0 included) by index, NaN scores last.
    func testNonMaxSuppressionOrdersScoresAndNaN() throws {
        let boxes = try Tensor(floats: (0..<5).flatMap { i -> [Float] in let x = Float(i) * 10; return [0, x, 1, x + 1] }, shape: [1, 5, 4])
        let scores = try Tensor(floats: [.nan, 0.5, 0.9, -0.0, 0.0], shape: [1, 1, 5])
        let selected = try Detection.nonMaxSuppression(boxes: boxes, scores: scores, maxPerClass: 5, iouThreshold: 0.5, scoreThreshold: nil, centerPointBox: false)
        XCTAssertEqual(stride(from: 2, to: 15, by: 3).map { selected.int64s[$0] }, [2, 1, 3, 4, 0])
    }

    func testNonMaxSuppressionMatchesTheExhaustiveCheck() throws {
        var rng = SeededGenerator(seed: 33)
        for trial in 0..<6 {
            let n = [50, 400, 1500, 300, 800, 64][trial], classes = trial % 2 == 0 ? 1 : 3
            var boxes: [Float] = [], scores: [Float] = []
            for i in 0..<n {
                // Boxes of a few groups shifted far apart, as batched NMS does per class.
                let shift = Float(i % 4) * 1000
                let x = Float.random(in: 0...200, using: &rng) + shift, y = Float.random(in: 0...200, using: &rng) + shift
                let w = Float.random(in: 0...60, using: &rng), h = Float.random(in: trial == 5 ? 0...0 : 0...60, using: &rng)
                boxes += trial == 3 && i % 7 == 0 ? [y, x, y, x] : [y, x, y + h, x + w]
                if trial == 4 && i % 11 == 0 { boxes[boxes.count - 1] = .nan }
            }
            if trial == 1 { for k in 0..<8 { boxes[(40 + k) * 4..<(41 + k) * 4] = boxes[40 * 4..<41 * 4] } }
            for _ in 0..<(classes * n) { scores.append(Float.random(in: 0...1, using: &rng)) }
            let boxTensor = try Tensor(floats: boxes, shape: [1, n, 4]), scoreTensor = try Tensor(floats: scores, shape: [1, classes, n])
            let maxPerClass = trial == 2 ? 100 : n
            let threshold = [0.5, 0.3, 0.55, 0.0, 0.7, 0.5][trial]
            let actual = try Detection.nonMaxSuppression(boxes: boxTensor, scores: scoreTensor, maxPerClass: maxPerClass, iouThreshold: threshold,
                                                         scoreThreshold: trial == 3 ? 0.2 : nil, centerPointBox: false).int64s
            // The exhaustive greedy selection.
            var expected: [Int64] = []
            let b = boxes.map(Double.init), s = scores.map(Double.init)
            func corners(_ i: Int) -> (Double, Double, Double, Double) {
                let (y1, x1, y2, x2) = (b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3])
                return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
            }
            for c in 0..<classes {
                var order = (0..<n).filter { trial != 3 || s[c * n + $0] > 0.2 }
                order.sort { s[c * n + $0] != s[c * n + $1] ? s[c * n + $0] > s[c * n + $1] : $0 < $1 }
                var kept: [Int] = []
                for i in order where kept.count < maxPerClass {
                    let a = corners(i), areaA = (a.2 - a.0) * (a.3 - a.1)
                    let suppressed = areaA > 0 && kept.contains { k in
                        let q = corners(k), areaQ = (q.2 - q.0) * (q.3 - q.1)
                        let ix = min(a.2, q.2) - max(a.0, q.0), iy = min(a.3, q.3) - max(a.1, q.1)
                        guard ix > 0, iy > 0, areaQ > 0 else { return false }
                        let inter = ix * iy, union = areaA + areaQ - inter
                        return union > 0 && inter / union > threshold
                    }
                    if !suppressed { kept.append(i) }
                }
                for i in kept { expected += [0, Int64(c), Int64(i)] }
            }
            XCTAssertEqual(actual, expected, "trial \(trial): \(actual.count / 3) selected, expected \(expected.count / 3)")
        }
    }
}
