/// Polygraphy-style comparison of an actual tensor with an expected one.
public struct Comparison: Sendable {
    /// Largest |actual - expected|.
    public var maxAbsoluteError: Double
    /// Largest |actual - expected| / |expected| (over elements with expected ≠ 0).
    public var maxRelativeError: Double
    /// Elements outside tolerance.
    public var mismatches: Int
    /// Elements compared.
    public var count: Int
    /// Why the comparison failed outright (shape or type), if it did.
    public var structuralError: String?

    public var passed: Bool { structuralError == nil && mismatches == 0 }

    /// Compares element by element. An element fails only where the absolute error
    /// exceeds `atol` and the relative error exceeds `rtol`. NaN matches NaN;
    /// infinities must match exactly.
    public static func compare(actual: Tensor, expected: Tensor, atol: Double, rtol: Double) -> Comparison {
        var result = Comparison(maxAbsoluteError: 0, maxRelativeError: 0, mismatches: 0, count: expected.count, structuralError: nil)
        if actual.shape != expected.shape {
            result.structuralError = "shape \(actual.shape) differs from expected \(expected.shape)"
            return result
        }
        if actual.dataType != expected.dataType {
            result.structuralError = "element type \(actual.dataType) differs from expected \(expected.dataType)"
            return result
        }
        if case .string(let a) = actual.storage, case .string(let e) = expected.storage {
            result.mismatches = zip(a, e).filter { $0 != $1 }.count
            return result
        }
        if actual.dataType == .uint64 || actual.dataType == .int64 {
            let a = actual.int64s, e = expected.int64s
            for i in 0..<a.count where a[i] != e[i] {
                let diff = Double(a[i]) - Double(e[i])
                let abs = Swift.abs(diff), rel = e[i] == 0 ? Double.infinity : abs / Swift.abs(Double(e[i]))
                result.maxAbsoluteError = Swift.max(result.maxAbsoluteError, abs)
                result.maxRelativeError = Swift.max(result.maxRelativeError, rel)
                if abs > atol && rel > rtol { result.mismatches += 1 }
            }
            return result
        }
        let a = actual.doubles, e = expected.doubles
        for i in 0..<a.count {
            let x = a[i], y = e[i]
            if x.isNaN && y.isNaN { continue }
            if x == y { continue }
            if x.isNaN || y.isNaN || x.isInfinite || y.isInfinite {
                result.mismatches += 1
                result.maxAbsoluteError = .infinity
                result.maxRelativeError = .infinity
                continue
            }
            let abs = Swift.abs(x - y)
            let rel = y == 0 ? Double.infinity : abs / Swift.abs(y)
            result.maxAbsoluteError = Swift.max(result.maxAbsoluteError, abs)
            if y != 0 { result.maxRelativeError = Swift.max(result.maxRelativeError, rel) }
            if abs > atol && rel > rtol { result.mismatches += 1 }
        }
        return result
    }
}
