import AnvilCore

/// Reads Resize's typed attributes with the defaults of the node's opset.
func resizeParameters(_ ctx: EvalContext) throws -> Resampling.Parameters {
    let a = ctx.attributes
    var p = Resampling.Parameters()
    let mode = try a.string("mode", "nearest")
    guard let m = Resampling.Mode(rawValue: mode) else { throw ctx.fail("mode '\(mode)' is not nearest, linear or cubic") }
    p.mode = m
    if ctx.opset < 11 || ctx.opType == "Upsample" {
        // Opset 10 Resize and Upsample: asymmetric coordinates, nearest rounds down.
        p.coordinates = .asymmetric
        p.nearest = .floor
        return p
    }
    let coordinates = try a.string("coordinate_transformation_mode", "half_pixel")
    guard let c = Resampling.CoordinateMode(rawValue: coordinates) else { throw ctx.fail("coordinate_transformation_mode '\(coordinates)' is not supported") }
    p.coordinates = c
    let nearest = try a.string("nearest_mode", "round_prefer_floor")
    guard let n = Resampling.NearestMode(rawValue: nearest) else { throw ctx.fail("nearest_mode '\(nearest)' is not supported") }
    p.nearest = n
    p.cubicA = Double(try a.float("cubic_coeff_a", -0.75))
    p.excludeOutside = try a.int("exclude_outside", 0) != 0
    p.extrapolationValue = Double(try a.float("extrapolation_value", 0))
    p.antialias = try a.int("antialias", 0) != 0
    return p
}

func registerResize(_ b: inout KernelTableBuilder) {
    b.add1("Resize", since: 10) { ctx in
        let x = try ctx.input(0)
        let p = try resizeParameters(ctx)
        let r = x.rank
        let scalesInput = ctx.opset < 11 ? ctx.optionalInput(1) : ctx.optionalInput(2)
        let sizesInput = ctx.opset < 11 ? nil : ctx.optionalInput(3)
        let axes = try (ctx.attributes.ints("axes") ?? Array(0..<r)).map { try ctx.axis($0, rank: r) }
        var roi: [Double]?
        if ctx.opset >= 11, let t = ctx.optionalInput(1), t.count > 0 {
            let v = t.doubles
            guard v.count == 2 * axes.count else { throw ctx.fail("roi has \(v.count) values, expected \(2 * axes.count)") }
            var full = Array(repeating: 0.0, count: r) + Array(repeating: 1.0, count: r)
            for (i, d) in axes.enumerated() { full[d] = v[i]; full[d + r] = v[axes.count + i] }
            roi = full
        }
        var scales = Array(repeating: 1.0, count: r)
        var output = x.shape
        if let sizes = sizesInput, sizes.count > 0 {
            let v = sizes.int64s.map { Int($0) }
            guard v.count == axes.count, v.allSatisfy({ $0 >= 0 }) else { throw ctx.fail("sizes \(v) do not fit axes \(axes)") }
            for (i, d) in axes.enumerated() { output[d] = v[i]; scales[d] = Double(v[i]) / Double(x.shape[d]) }
            let policy = try ctx.attributes.string("keep_aspect_ratio_policy", "stretch")
            if policy != "stretch" {
                guard policy == "not_larger" || policy == "not_smaller" else { throw ctx.fail("keep_aspect_ratio_policy '\(policy)' is not supported") }
                let chosen = axes.map { scales[$0] }
                let s = policy == "not_larger" ? chosen.min()! : chosen.max()!
                for d in axes { scales[d] = s; output[d] = Int(s * Double(x.shape[d]) + 0.5) }
            }
        } else if let t = scalesInput, t.count > 0 {
            let v = t.doubles
            guard v.count == axes.count else { throw ctx.fail("scales has \(v.count) values for \(axes.count) axes") }
            for (i, d) in axes.enumerated() {
                guard v[i] > 0 else { throw ctx.fail("scale \(v[i]) must be positive") }
                scales[d] = v[i]
                output[d] = Int((v[i] * Double(x.shape[d])).rounded(.down))
            }
        } else {
            throw ctx.fail("one of scales and sizes must be given")
        }
        try MemoryPolicy.checkedCount(output, x.dataType, for: "the output")
        return try named(ctx) { try Resampling.resize(x, outputShape: output, scales: scales, roi: roi, p) }
    }
    b.add1("Upsample") { ctx in
        let x = try ctx.input(0)
        let scales = ctx.opset < 9 ? try ctx.attributes.floats("scales")?.map { Double($0) } ?? [] : try ctx.input(1).doubles
        guard scales.count == x.rank, scales.allSatisfy({ $0 >= 1 }) else { throw ctx.fail("scales \(scales) must hold one value ≥ 1 per axis of \(x.shape)") }
        let output = zip(x.shape, scales).map { Int((Double($0) * $1).rounded(.down)) }
        return try named(ctx) { try Resampling.resize(x, outputShape: output, scales: scales, roi: nil, resizeParameters(ctx)) }
    }
}
