import AnvilCore

/// Training losses (exported inside inference graphs by some tools).
func registerLosses(_ b: inout KernelTableBuilder) {
    b.add("NegativeLogLikelihoodLoss", since: 12) { ctx in
        [try negativeLogLikelihood(ctx, logProbabilities: ctx.input(0), target: ctx.input(1), weight: ctx.optionalInput(2))]
    }
    b.add("SoftmaxCrossEntropyLoss", since: 12) { ctx in
        let scores = try ctx.input(0)
        guard scores.rank >= 2 else { throw ctx.fail("scores must have rank ≥ 2, got \(scores.shape)") }
        let logProbabilities = try Normalization.softmax(scores, axis: 1, coerced2D: false, kind: "log")
        let loss = try negativeLogLikelihood(ctx, logProbabilities: logProbabilities, target: ctx.input(1), weight: ctx.optionalInput(2))
        return ctx.outputCount > 1 ? [loss, logProbabilities] : [loss]
    }
}

/// NegativeLogLikelihoodLoss on log-probabilities [N, C, d...] and targets [N, d...].
func negativeLogLikelihood(_ ctx: EvalContext, logProbabilities: Tensor, target: Tensor, weight: Tensor?) throws -> Tensor {
    let reduction = try ctx.attributes.string("reduction", "mean")
    guard ["mean", "sum", "none"].contains(reduction) else { throw ctx.fail("reduction '\(reduction)' is not mean, sum or none") }
    let ignore = try ctx.attributes.int("ignore_index")
    let shape = logProbabilities.shape
    let n = shape[0], c = shape[1], inner = shape[2...].reduce(1, *)
    guard target.shape == [n] + Array(shape[2...]) else { throw ctx.fail("target \(target.shape) does not fit input \(shape)") }
    let lp = logProbabilities.doubles, t = target.int64s.map { Int($0) }, w = weight?.doubles
    var losses = [Double](repeating: 0, count: n * inner)
    var weightSum = 0.0
    for b in 0..<n { for i in 0..<inner {
        let cls = t[b * inner + i]
        if let ignore, cls == ignore { continue }
        guard cls >= 0, cls < c else { throw ctx.fail("target class \(cls) is outside 0..<\(c)") }
        let wt = w?[cls] ?? 1
        losses[b * inner + i] = -lp[(b * c + cls) * inner + i] * wt
        weightSum += wt
    } }
    switch reduction {
    case "none": return try Tensor(logProbabilities.dataType, shape: target.shape, doubles: losses)
    case "sum": return try Tensor(logProbabilities.dataType, shape: [], doubles: [losses.reduce(0, +)])
    default: return try Tensor(logProbabilities.dataType, shape: [], doubles: [weightSum == 0 ? 0 : losses.reduce(0, +) / weightSum])
    }
}
