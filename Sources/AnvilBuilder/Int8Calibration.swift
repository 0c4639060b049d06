import AnvilCore
import AnvilRuntime
import Foundation

/// How INT8 calibration turns a tensor's observed values into the range it quantizes
/// (`--calibMethod`): every tensor's range is symmetric ([−t, t], int8) unless the tensor
/// never went negative ([0, t], uint8: ReLU outputs), t chosen as
/// - `minmax`: the largest magnitude seen;
/// - `entropy`: the threshold whose 8-bit quantization of the magnitude histogram loses
///   the least information (Kullback–Leibler divergence), as TensorRT's entropy calibrator;
/// - `percentile`: the given percentile of the magnitudes (default 99.99).
public enum CalibrationMethod: String, Sendable, CaseIterable, CustomStringConvertible {
    case minmax, entropy, percentile

    public var description: String { rawValue }
}

/// The ranges an INT8 build quantizes tensors to, measured on calibration data by the FP32
/// engine (every layer output, by value name) or read from a calibration cache.
public struct Int8Calibration: Sendable, Equatable {
    public struct Range: Sendable, Equatable {
        public var low: Double
        public var high: Double

        public init(low: Double, high: Double) {
            self.low = low
            self.high = high
        }
    }

    public var method: CalibrationMethod
    public var ranges: [String: Range]

    public init(method: CalibrationMethod, ranges: [String: Range]) {
        self.method = method
        self.ranges = ranges
    }

    /// Bins of the magnitude histograms (`entropy`, `percentile`).
    static let bins = 2048

    /// Runs `engine` with every layer output marked on each sample and derives each float
    /// tensor's range by `method`; `progress` hears (samples done, samples to do) over the
    /// one pass (minmax) or two (the others: extremes, then histograms).
    public static func measure(_ engine: Engine, samples: [[String: Tensor]], method: CalibrationMethod, percentile: Double = 99.99,
                               progress: ((Int, Int) -> Void)? = nil) throws -> Int8Calibration {
        guard !samples.isEmpty else { throw AnvilError.invalidArgument("INT8 calibration needs calibration data (--calib DIR) or a --calibCache") }
        guard percentile > 0, percentile <= 100 else { throw AnvilError.invalidArgument("--calibPercentile must lie in (0, 100], got \(percentile)") }
        let context = ExecutionContext(engine: try engine.markingAllOutputs())
        let passes = method == .minmax ? 1 : 2
        func tensors(_ sample: [String: Tensor]) throws -> [(String, [Float])] {
            let outputs = try context.run(sample).map { ($0.name, $0.value) }
            return (Array(sample) + outputs).compactMap { name, t in t.dataType == .float ? (name, t.floats) : nil }
        }
        var low: [String: Float] = [:], high: [String: Float] = [:]
        for (k, sample) in samples.enumerated() {
            for (name, values) in try tensors(sample) {
                var lo = low[name] ?? .infinity, hi = high[name] ?? -.infinity
                for v in values where v.isFinite { lo = min(lo, v); hi = max(hi, v) }
                (low[name], high[name]) = (lo, hi)
            }
            progress?(k + 1, samples.count * passes)
        }
        var magnitude: [String: Double] = [:]
        for (name, lo) in low where lo.isFinite { magnitude[name] = Double(max(-lo, high[name]!)) }
        var histograms: [String: [Double]] = [:]
        if passes == 2 {
            // One flat table of counts, a row per tensor (no copy-on-write of per-tensor arrays).
            // Exact zeros (half of a ReLU's outputs) are left out: 0 quantizes exactly at any
            // threshold, and their spike in the first bin would dominate the divergence.
            let names = magnitude.filter { $0.value > 0 }.keys.sorted()
            let row = Dictionary(uniqueKeysWithValues: names.enumerated().map { ($0.element, $0.offset) })
            var counts = [Double](repeating: 0, count: names.count * bins)
            for (k, sample) in samples.enumerated() {
                for (name, values) in try tensors(sample) {
                    guard let r = row[name], let m = magnitude[name] else { continue }
                    let perBin = Float(Double(bins) / m), last = Float(bins - 1), base = r * bins
                    counts.withUnsafeMutableBufferPointer { c in
                        for v in values where v.isFinite && v != 0 { c[base + Int(min(abs(v) * perBin, last))] += 1 }
                    }
                }
                progress?(samples.count + k + 1, samples.count * passes)
            }
            for (name, r) in row { histograms[name] = Array(counts[(r * bins)..<((r + 1) * bins)]) }
        }
        var ranges: [String: Range] = [:]
        for (name, m) in magnitude {
            let signed = low[name]! < 0
            var t = signed ? m : Double(high[name]!)
            if let h = histograms[name], m > 0 {
                let width = m / Double(bins)
                t = min(t, method == .entropy ? entropyThreshold(h, binWidth: width, levels: signed ? 128 : 256) : percentileThreshold(h, binWidth: width, percentile))
            }
            ranges[name] = Range(low: signed ? -t : 0, high: t)
        }
        return Int8Calibration(method: method, ranges: ranges)
    }

    /// The threshold (a bin edge) below which `percentile` % of the histogram lies.
    public static func percentileThreshold(_ h: [Double], binWidth: Double, _ percentile: Double) -> Double {
        let total = h.reduce(0, +), target = total * percentile / 100
        var sum = 0.0
        for (i, c) in h.enumerated() {
            sum += c
            if sum >= target { return Double(i + 1) * binWidth }
        }
        return Double(h.count) * binWidth
    }

    /// TensorRT's entropy calibration: for each candidate threshold (every 8th bin from
    /// `levels` on), the histogram below it with the outliers folded into its last bin (P) is
    /// compared with its quantization to `levels` levels expanded back over the bins that
    /// were not empty (Q); the threshold with the smallest KL(P ‖ Q) wins.
    public static func entropyThreshold(_ h: [Double], binWidth: Double, levels: Int) -> Double {
        let n = h.count
        guard h.reduce(0, +) > 0, levels < n else { return Double(n) * binWidth }
        // Prefix sums of the counts and of the non-empty bins: each level's mass and support in O(1).
        var mass = [Double](repeating: 0, count: n + 1), used = [Int](repeating: 0, count: n + 1)
        for i in 0..<n { (mass[i + 1], used[i + 1]) = (mass[i] + h[i], used[i] + (h[i] > 0 ? 1 : 0)) }
        var best = (divergence: Double.infinity, bins: n)
        var q = [Double](repeating: 0, count: n)
        for i in stride(from: levels, through: n, by: 8) {
            // P: the first i bins, the outliers folded into the last; Q: P's bins in `levels` groups.
            let perLevel = Double(i) / Double(levels)
            for level in 0..<levels {
                let start = Int(Double(level) * perLevel), end = level == levels - 1 ? i : Int(Double(level + 1) * perLevel)
                let support = used[end] - used[start]
                guard end > start, support > 0 else { continue }
                let share = (mass[end] - mass[start]) / Double(support)
                for j in start..<end { q[j] = h[j] > 0 ? share : 0 }
            }
            let pTotal = mass[n], qTotal = mass[i]
            guard qTotal > 0 else { continue }
            var divergence = 0.0
            for j in 0..<i {
                let pj = (j == i - 1 ? h[j] + mass[n] - mass[i] : h[j]) / pTotal
                guard pj > 0 else { continue }
                // A bin Q leaves empty (only the folded outliers' last bin can be) costs as if nearly empty.
                let qj = max(q[j] / qTotal, 1e-12)
                divergence += pj * log(pj / qj)
            }
            if divergence < best.divergence { best = (divergence, i) }
        }
        return (Double(best.bins) + 0.5) * binWidth
    }

    // MARK: The calibration cache (--calibCache)

    /// JSON: {"anvilCalibration": 1, "method": "entropy", "ranges": {"tensor": [low, high], …}}.
    public func encoded() throws -> [UInt8] {
        let object: [String: Any] = ["anvilCalibration": 1, "method": method.rawValue,
                                     "ranges": Dictionary(uniqueKeysWithValues: ranges.map { ($0.key, [$0.value.low, $0.value.high]) })]
        return Array(try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted]))
    }

    /// Reads a cache written by `encoded()`; anything else is refused naming the file and what is wrong.
    public init(cache bytes: [UInt8], file: String) throws {
        func bad(_ reason: String) -> AnvilError { AnvilError.invalidArgument("calibration cache \(file): \(reason)") }
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else { throw bad("not a JSON object") }
        guard (object["anvilCalibration"] as? NSNumber)?.intValue == 1 else { throw bad("not an Anvil calibration cache (version 1)") }
        guard let name = object["method"] as? String, let method = CalibrationMethod(rawValue: name) else { throw bad("no known \"method\"") }
        guard let table = object["ranges"] as? [String: Any] else { throw bad("no \"ranges\" object") }
        var ranges: [String: Range] = [:]
        for (tensor, value) in table {
            guard let pair = value as? [NSNumber], pair.count == 2, case let (low, high) = (pair[0].doubleValue, pair[1].doubleValue),
                  low.isFinite, high.isFinite, low <= 0, high >= 0, low == 0 || abs(low + high) <= 1e-9 * high else {
                throw bad("the range of '\(tensor)' is not [low, high] with low 0 or −high")
            }
            ranges[tensor] = Range(low: low == 0 ? 0 : -high, high: high)
        }
        self.init(method: method, ranges: ranges)
    }
}
