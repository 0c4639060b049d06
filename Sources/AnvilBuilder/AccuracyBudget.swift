import AnvilCore
import AnvilIR
import AnvilKernels
import AnvilRuntime

/// How close a reduced-precision engine must stay to the FP32 engine on the calibration
/// data (`--accuracyBudget`), measured over every sample and output:
/// - `cosine=c`: the smallest cosine similarity of an output with its FP32 value is at least c;
/// - `rtol=r`: the largest absolute error of an output is at most r × its largest FP32 magnitude;
/// - `top1=p`: classifier-like outputs ([C] or [N, C]) agree on the top class in at least a
///   share p of their rows.
public enum AccuracyBudget: Sendable, Equatable, CustomStringConvertible {
    case cosine(Double)
    case relativeError(Double)
    case top1(Double)

    public static func parse(_ text: String) throws -> AccuracyBudget {
        let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, let v = Double(parts[1]), v.isFinite else {
            throw AnvilError.invalidArgument("--accuracyBudget '\(text)' is not cosine=C, rtol=R or top1=P")
        }
        switch parts[0] {
        case "cosine" where (-1...1).contains(v): return .cosine(v)
        case "rtol" where v >= 0: return .relativeError(v)
        case "top1" where (0...1).contains(v): return .top1(v)
        case "cosine", "top1": throw AnvilError.invalidArgument("--accuracyBudget \(parts[0]) must lie in \(parts[0] == "cosine" ? "[-1, 1]" : "[0, 1]"), got \(v)")
        case "rtol": throw AnvilError.invalidArgument("--accuracyBudget rtol must not be negative, got \(v)")
        default: throw AnvilError.invalidArgument("--accuracyBudget '\(parts[0])' is not cosine, rtol or top1")
        }
    }

    public var description: String {
        switch self {
        case .cosine(let c): "cosine ≥ \(c)"
        case .relativeError(let r): "max error ≤ \(r) × max |FP32|"
        case .top1(let p): "top-1 agreement ≥ \(p)"
        }
    }

    /// The measured value (cosine, relative error or agreement) of `actual` against `reference`,
    /// per sample and output, and whether it is within the budget.
    func measure(_ actual: [[Tensor]], _ reference: [[Tensor]]) throws -> (value: Double, holds: Bool) {
        var worst: Double
        switch self {
        case .cosine(let c):
            worst = 1
            for (a, r) in zip(actual.joined(), reference.joined()) where r.dataType.isFloatingPoint {
                worst = Swift.min(worst, OutputComparison.cosine(a.doubles, r.doubles))
            }
            return (worst, worst >= c)
        case .relativeError(let bound):
            worst = 0
            for (a, r) in zip(actual.joined(), reference.joined()) where r.dataType.isFloatingPoint {
                let x = a.doubles, y = r.doubles
                let scale = y.map(abs).max() ?? 0
                let error = zip(x, y).map { abs($0 - $1) }.max() ?? 0
                worst = Swift.max(worst, scale == 0 ? (error == 0 ? 0 : .infinity) : error / scale)
            }
            return (worst, worst <= bound)
        case .top1(let share):
            var rows = 0, agree = 0
            for (a, r) in zip(actual.joined(), reference.joined()) where r.dataType.isFloatingPoint {
                guard let agreement = OutputComparison.topAgreement(a.doubles, r.doubles, shape: r.shape) else { continue }
                (rows, agree) = (rows + agreement.rows, agree + agreement.top1)
            }
            guard rows > 0 else { throw AnvilError.invalidArgument("--accuracyBudget top1 needs a classifier-like output ([C] or [N, C] scores); the model has none") }
            let value = Double(agree) / Double(rows)
            return (value, value >= share)
        }
    }
}

/// What the builder chose for one weighted layer, and why (`anvil build` prints it).
public struct PrecisionChoice: Sendable, Equatable {
    public let layer: String
    public let precision: Precision
    public let reason: String
}

extension EngineBuilder {
    /// Builds with the precision policy, then moves the layers that hurt most to a higher
    /// precision (INT8 → BF16 where BF16 is allowed, else → FP32) until `budget` holds on
    /// `calibration` against the FP32 engine: each round ranks the reduced layers by the
    /// error they add themselves (1 − cosine of their output against the FP32 engine's, less
    /// the worst of their inputs', with every layer output marked) and moves the worst quarter. Returns the final engine, what each weighted layer
    /// got and why, and the budget measured.
    func buildWithinBudget(_ source: Model, name: String, budget: AccuracyBudget, calibration: [[String: Tensor]]) throws
        -> (Result, choices: [PrecisionChoice], measured: Double) {
        guard !calibration.isEmpty else { throw AnvilError.invalidArgument("--accuracyBudget needs calibration data (--calib DIR)") }
        // The FP32 engine as the final build will make it (tactics timed the same way, through
        // the same timing cache): an engine moved back entirely to FP32 then equals it exactly.
        var fp32 = self
        (fp32.precision, fp32.budget) = (PrecisionPolicy(), nil)
        let reference = try fp32.build(source, name: name).engine
        let referenceOutputs = try calibration.map { try ExecutionContext(engine: reference).run($0).map(\.value) }
        // The FP32 engine's layer outputs on the first samples, which rank the reduced layers.
        let sample = Array(calibration.prefix(2))
        let referenceLayers = try sample.map { try reference.layerOutputs($0) }
        var search = self
        (search.timeTactics, search.budget) = (false, nil)
        // Layers moved to a higher precision: INT8 → BF16 or FP16 (when allowed) → FP32.
        var movedBack: [String: (precision: Precision, reason: String)] = [:]
        var measured = 0.0
        /// Builds with the layers moved so far (and `extra`) and measures the budget.
        func attempt(_ extra: [String: (precision: Precision, reason: String)]) throws -> (engine: Engine, value: Double, holds: Bool) {
            var policy = precision
            for (layer, moved) in movedBack.merging(extra, uniquingKeysWith: { $1 }) { policy.layerPrecisions[layer] = moved.precision }
            search.precision = policy
            let candidate = try search.build(source, name: name).engine
            let context = ExecutionContext(engine: candidate)
            let (value, holds) = try budget.measure(try calibration.map { try context.run($0).map(\.value) }, referenceOutputs)
            return (candidate, value, holds)
        }
        // Each round: rank the reduced layers by the error they add, then find by bisection the
        // fewest of the worst that, moved one precision up, make the budget hold; when even all
        // of them do not, move them all and go on from there (BF16 → FP32).
        var (candidate, value, holds) = try attempt([:])
        measured = value
        for round in 1... {
            // The weighted layers in BF16 or INT8 (not the max poolings and quantizations around INT8 ones).
            let reduced = candidate.graph.layers.filter { ($0.decision?.precision ?? .fp32) != .fp32 && precision.layerPrecisions[$0.name] == nil
                && !$0.fusedFrom.contains { precision.layerPrecisions[$0] != nil } && PrecisionPolicy.isWeighted($0, candidate.graph.constants) }
            if holds || reduced.isEmpty { break }
            // The error each reduced layer adds, on the first samples.
            var added: [String: Double] = [:]
            for (inputs, r) in zip(sample, referenceLayers) {
                let c = try candidate.layerOutputs(inputs)
                func error(_ value: String) -> Double {
                    guard let x = c[value], let y = r[value], x.count == y.count, x.dataType.isFloatingPoint else { return 0 }
                    return 1 - OutputComparison.cosine(x.doubles, y.doubles)
                }
                for layer in candidate.graph.layers {
                    let own = (layer.outputs.first.map(error) ?? 0) - (layer.inputs.map(error).max() ?? 0)
                    added[layer.name, default: 0] += own
                }
            }
            let ranked = reduced.sorted { (added[$0.name] ?? 0) > (added[$1.name] ?? 0) }
            func moves(_ k: Int) -> [String: (precision: Precision, reason: String)] {
                Dictionary(uniqueKeysWithValues: ranked.prefix(k).map { layer in
                    let int8 = layer.decision?.precision == .int8
                    let next: Precision = int8 && precision.bf16 && host.contains(.avx512Bf16) ? .bf16 : int8 && precision.fp16 ? .fp16 : .fp32
                    return (layer.name, (next, "moved to \(next) in round \(round): adds \(String(format: "%.2g", Swift.max(0, added[layer.name] ?? 0))) to 1 − cosine"))
                })
            }
            // The smallest k that holds, in (low, high]; high = all moved is tried first.
            var all = try attempt(moves(ranked.count))
            guard all.holds else {
                movedBack.merge(moves(ranked.count)) { $1 }
                (candidate, value, holds) = all
                measured = value
                continue
            }
            var (low, high) = (0, ranked.count)
            while high - low > 1 {
                let mid = (low + high) / 2
                let probe = try attempt(moves(mid))
                if probe.holds { (high, all) = (mid, probe) } else { low = mid }
            }
            movedBack.merge(moves(high)) { $1 }
            (candidate, value, holds) = all
            measured = value
        }
        var final = self
        final.budget = nil
        for (layer, moved) in movedBack { final.precision.layerPrecisions[layer] = moved.precision }
        let result = try final.build(source, name: name)
        // Measured again on the engine as built (its tactics may round otherwise than the search's).
        let context = ExecutionContext(engine: result.engine)
        let built = try budget.measure(try calibration.map { try context.run($0).map(\.value) }, referenceOutputs)
        measured = built.value
        guard built.holds else {
            throw AnvilError.invalidArgument("the accuracy budget \(budget) cannot be met: with every layer it could move back in FP32 the engine measures "
                                             + "\(String(format: "%.6g", built.value)) on the calibration data (layers pinned by --layerPrecisions stay as given)")
        }
        let choices = result.graph.layers.compactMap { layer -> PrecisionChoice? in
            guard let d = layer.decision, PrecisionPolicy.isWeighted(layer, result.graph.constants) else { return nil }
            let asked = ([layer.name] + layer.fusedFrom).contains { precision.layerPrecisions[$0] != nil }
            let reason = movedBack[layer.name]?.reason ?? (asked ? "--layerPrecisions" : d.precision == .fp32 ? "first or last weighted layer" : "within the budget")
            return PrecisionChoice(layer: layer.name, precision: d.precision, reason: reason)
        }
        return (result, choices, measured)
    }
}
