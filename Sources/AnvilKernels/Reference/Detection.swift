import AnvilCore

/// Reference kernel for NonMaxSuppression.
public enum Detection {
    /// Greedy per-class suppression. Boxes are [batch, n, 4] as corners (y1, x1, y2, x2,
    /// in any order) or, with `centerPointBox`, as (x centre, y centre, width, height).
    /// Returns selected (batch, class, box) triples as int64 [k, 3].
    public static func nonMaxSuppression(boxes: Tensor, scores: Tensor, maxPerClass: Int, iouThreshold: Double,
                                         scoreThreshold: Double?, centerPointBox: Bool) throws -> Tensor {
        guard boxes.rank == 3, boxes.shape[2] == 4, scores.rank == 3, scores.shape[0] == boxes.shape[0], scores.shape[2] == boxes.shape[1] else {
            throw AnvilError.invalidTensor(name: "NonMaxSuppression", reason: "boxes \(boxes.shape) and scores \(scores.shape) must be [b, n, 4] and [b, c, n]")
        }
        let (batches, classes, n) = (scores.shape[0], scores.shape[1], scores.shape[2])
        let bv = boxes.doubles, sv = scores.doubles
        func corners(_ b: Int, _ i: Int) -> (Double, Double, Double, Double) {
            let o = (b * n + i) * 4
            if centerPointBox {
                let (xc, yc, w, h) = (bv[o], bv[o + 1], bv[o + 2], bv[o + 3])
                return (xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2)
            }
            let (y1, x1, y2, x2) = (bv[o], bv[o + 1], bv[o + 2], bv[o + 3])
            return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
        }
        func suppresses(_ b: Int, _ i: Int, _ j: Int) -> Bool {
            let a = corners(b, i), c = corners(b, j)
            let ix = min(a.2, c.2) - max(a.0, c.0), iy = min(a.3, c.3) - max(a.1, c.1)
            guard ix > 0, iy > 0 else { return false }
            let inter = ix * iy
            let areaA = (a.2 - a.0) * (a.3 - a.1), areaC = (c.2 - c.0) * (c.3 - c.1)
            let union = areaA + areaC - inter
            guard areaA > 0, areaC > 0, union > 0 else { return false }
            return inter / union > iouThreshold
        }
        var selected: [Int64] = []
        guard maxPerClass > 0 else { return try Tensor(int64s: [], shape: [0, 3]) }
        for b in 0..<batches {
            for c in 0..<classes {
                let base = (b * classes + c) * n
                var candidates = (0..<n).filter { scoreThreshold == nil || sv[base + $0] > scoreThreshold! }
                candidates.sort { sv[base + $0] != sv[base + $1] ? sv[base + $0] > sv[base + $1] : $0 < $1 }
                var kept: [Int] = []
                for i in candidates where kept.count < maxPerClass {
                    if !kept.contains(where: { suppresses(b, $0, i) }) { kept.append(i) }
                }
                for i in kept { selected += [Int64(b), Int64(c), Int64(i)] }
            }
        }
        return try Tensor(int64s: selected, shape: [selected.count / 3, 3])
    }
}
