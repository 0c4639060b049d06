/// Distribution of a tensor's values, as Polygraphy prints for each side of a comparison.
/// NaN and ±∞ are counted apart; the statistics are over the finite values.
public struct ValueSummary: Codable, Sendable, Equatable {
    public var count = 0
    public var nanCount = 0
    public var infinityCount = 0
    public var mean = 0.0
    public var std = 0.0
    public var min = 0.0
    public var max = 0.0
    /// Multi-dimensional index of the (first) minimum and maximum.
    public var minIndex: [Int] = []
    public var maxIndex: [Int] = []
    public var median = 0.0
    public var p90 = 0.0
    public var p95 = 0.0
    public var p99 = 0.0

    public init() {}

    /// The summary of `values` laid out in `shape` (row-major).
    public init(_ values: [Double], shape: [Int]) {
        var finite: [Double] = []
        finite.reserveCapacity(values.count)
        var lo = 0, hi = 0
        for (i, v) in values.enumerated() {
            if v.isNaN { nanCount += 1; continue }
            if v.isInfinite { infinityCount += 1; continue }
            if finite.isEmpty || v < values[lo] { lo = i }
            if finite.isEmpty || v > values[hi] { hi = i }
            finite.append(v)
        }
        count = values.count
        guard !finite.isEmpty else { return }
        mean = finite.reduce(0, +) / Double(finite.count)
        std = (finite.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(finite.count)).squareRoot()
        (min, max) = (values[lo], values[hi])
        (minIndex, maxIndex) = (Self.index(lo, shape), Self.index(hi, shape))
        finite.sort()
        func quantile(_ q: Double) -> Double {
            // Linear interpolation between closest ranks (numpy's default).
            let position = q * Double(finite.count - 1), below = Int(position.rounded(.down))
            let above = Swift.min(below + 1, finite.count - 1), t = position - Double(below)
            return finite[below] + (finite[above] - finite[below]) * t
        }
        (median, p90, p95, p99) = (quantile(0.5), quantile(0.9), quantile(0.95), quantile(0.99))
    }

    static func index(_ flat: Int, _ shape: [Int]) -> [Int] {
        var rest = flat
        var index = [Int](repeating: 0, count: shape.count)
        for d in stride(from: shape.count - 1, through: 0, by: -1) where shape[d] > 0 {
            index[d] = rest % shape[d]
            rest /= shape[d]
        }
        return index
    }
}

/// Which statistic of the error decides a comparison (Polygraphy's --check-error-stat).
public enum ErrorStatistic: String, Codable, Sendable, CaseIterable {
    /// Every element: it fails where its absolute error exceeds atol and its relative error rtol.
    case elemwise
    /// The largest errors: fails when the max absolute error exceeds atol and the max relative error rtol.
    case max
    case mean
    case median
}

/// Everything Anvil reports about one output compared with its reference.
public struct OutputComparison: Codable, Sendable {
    public var name: String
    public var shape: [Int]
    public var passed: Bool
    /// Why the tensors could not be compared (shape, element type), if so.
    public var structuralError: String?
    public var atol: Double
    public var rtol: Double
    public var errorStatistic: ErrorStatistic
    /// The largest absolute and relative errors (infinite where NaN or ±∞ do not match).
    public var maxAbsoluteError: Double
    public var maxRelativeError: Double
    /// Elements outside tolerance (elementwise rule), of `count`.
    public var mismatches: Int
    public var count: Int
    public var actual: ValueSummary
    public var expected: ValueSummary
    public var absoluteError: ValueSummary
    public var relativeError: ValueSummary
    /// Ten equal bins of the absolute error from 0 to its maximum: upper bounds and counts.
    public var histogram: [HistogramBin]
    /// The smallest atol that passes with rtol 0, and the smallest rtol that passes with atol 0,
    /// under the chosen error statistic.
    public var requiredAtol: Double
    public var requiredRtol: Double
    /// Cosine similarity of the two tensors as vectors (nil for non-float or empty tensors).
    public var cosine: Double?
    /// For classifier-like outputs ([C] or [N, C] scores): how often the top-1 class agrees,
    /// and the mean overlap of the top-5 sets (fractions of rows).
    public var top1Agreement: Double?
    public var top5Overlap: Double?

    public struct HistogramBin: Codable, Sendable {
        public var upTo: Double
        public var count: Int
    }

    /// Compares `actual` with `expected` under Polygraphy's rules: the relative error of an
    /// element is |a − e| / |e| (infinite where e = 0 and a ≠ e); NaN matches NaN and
    /// infinities must match exactly.
    public static func compare(name: String, actual: Tensor, expected: Tensor, atol: Double, rtol: Double,
                               statistic: ErrorStatistic = .elemwise) -> OutputComparison {
        let basic = Comparison.compare(actual: actual, expected: expected, atol: atol, rtol: rtol)
        var result = OutputComparison(name: name, shape: expected.shape, passed: basic.passed, structuralError: basic.structuralError, atol: atol,
                                      rtol: rtol, errorStatistic: statistic, maxAbsoluteError: basic.maxAbsoluteError,
                                      maxRelativeError: basic.maxRelativeError, mismatches: basic.mismatches, count: basic.count,
                                      actual: ValueSummary(), expected: ValueSummary(), absoluteError: ValueSummary(), relativeError: ValueSummary(),
                                      histogram: [], requiredAtol: basic.maxAbsoluteError, requiredRtol: basic.maxRelativeError)
        guard basic.structuralError == nil, actual.dataType != .string else { return result }
        let a = actual.doubles, e = expected.doubles
        var absolute = [Double](repeating: 0, count: a.count), relative = [Double](repeating: 0, count: a.count)
        for i in a.indices {
            let x = a[i], y = e[i]
            if (x.isNaN && y.isNaN) || x == y { continue }
            if x.isNaN || y.isNaN || x.isInfinite || y.isInfinite {
                (absolute[i], relative[i]) = (.infinity, .infinity)
                continue
            }
            absolute[i] = Swift.abs(x - y)
            relative[i] = y == 0 ? .infinity : absolute[i] / Swift.abs(y)
        }
        result.actual = ValueSummary(a, shape: actual.shape)
        result.expected = ValueSummary(e, shape: expected.shape)
        result.absoluteError = ValueSummary(absolute, shape: expected.shape)
        result.relativeError = ValueSummary(relative, shape: expected.shape)
        let top = absolute.filter(\.isFinite).max() ?? 0
        var counts = [Int](repeating: 0, count: 10)
        for v in absolute where v.isFinite { counts[top == 0 ? 0 : Swift.min(9, Int(v / top * 10))] += 1 }
        result.histogram = (0..<10).map { HistogramBin(upTo: top * Double($0 + 1) / 10, count: counts[$0]) }
        let infinite = absolute.contains { $0.isInfinite }
        switch statistic {
        case .elemwise:
            (result.requiredAtol, result.requiredRtol) = (basic.maxAbsoluteError, basic.maxRelativeError)
        case .max:
            (result.requiredAtol, result.requiredRtol) = (infinite ? .infinity : result.absoluteError.max, relative.max() ?? 0)
            result.passed = a.isEmpty || result.requiredAtol <= atol || result.requiredRtol <= rtol
        case .mean, .median:
            func stat(_ v: [Double]) -> Double {
                if v.isEmpty { return 0 }
                if v.contains(where: \.isNaN) || (statistic == .mean && v.contains(where: \.isInfinite)) { return .infinity }
                if statistic == .mean { return v.reduce(0, +) / Double(v.count) }
                let s = v.sorted()
                return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
            }
            (result.requiredAtol, result.requiredRtol) = (stat(absolute), stat(relative))
            result.passed = a.isEmpty || result.requiredAtol <= atol || result.requiredRtol <= rtol
        }
        if actual.dataType.isFloatingPoint, !a.isEmpty {
            result.cosine = Self.cosine(a, e)
            if let agreement = Self.topAgreement(a, e, shape: expected.shape) {
                result.top1Agreement = Double(agreement.top1) / Double(agreement.rows)
                if expected.shape.last! >= 5 { result.top5Overlap = Double(agreement.top5) / Double(agreement.rows * 5) }
            }
        }
        return result
    }

    /// Cosine similarity of two vectors: 1 for two zero vectors, 0 for one zero vector or a
    /// non-finite product.
    public static func cosine(_ a: [Double], _ b: [Double]) -> Double {
        var dot = 0.0, na = 0.0, nb = 0.0
        for i in a.indices { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i] }
        if na == 0 && nb == 0 { return 1 }
        return na == 0 || nb == 0 || !dot.isFinite ? 0 : dot / (na.squareRoot() * nb.squareRoot())
    }

    /// For classifier-like scores ([C] or [N, C], C ≥ 2): the rows, how many agree on the top
    /// class, and the sum over rows of the top-5 sets' overlap; nil for other shapes.
    public static func topAgreement(_ a: [Double], _ e: [Double], shape: [Int]) -> (rows: Int, top1: Int, top5: Int)? {
        guard shape.count == 1 || shape.count == 2, let classes = shape.last, classes >= 2, a.count == e.count else { return nil }
        let rows = e.count / classes
        var top1 = 0, overlap = 0
        for r in 0..<rows {
            let ta = top(Array(a[(r * classes)..<((r + 1) * classes)]), 5), te = top(Array(e[(r * classes)..<((r + 1) * classes)]), 5)
            if ta.first == te.first { top1 += 1 }
            overlap += Set(ta).intersection(te).count
        }
        return rows > 0 ? (rows, top1, overlap) : nil
    }

    /// Indices of the `k` largest values, largest first (NaN ranks highest, as TopK does).
    static func top(_ v: [Double], _ k: Int) -> [Int] {
        Array(v.indices.sorted { (v[$0].isNaN ? Double.infinity : v[$0], -$0) > (v[$1].isNaN ? Double.infinity : v[$1], -$1) }.prefix(k))
    }
}
