import AnvilCore

/// Stacks equally shaped tensors along a new axis 0 (Loop scan outputs).
func stack(_ parts: [Tensor], ctx: EvalContext) throws -> Tensor {
    guard let first = parts.first else { throw ctx.fail("no iterations produced a scan output") }
    for p in parts where p.shape != first.shape {
        throw ctx.fail("scan output changes shape across iterations: \(first.shape) vs \(p.shape)")
    }
    return try Tensor(shape: [parts.count] + first.shape, storage: Tensor.concatenatedStorage(parts, type: first.dataType))
}

func registerControlFlow(_ b: inout KernelTableBuilder) {
    b.add("If") { ctx in
        let cond = try ctx.input(0)
        guard cond.count == 1 else { throw ctx.fail("condition must hold one element, has \(cond.count)") }
        let branch = try ctx.attributes.graph(cond.bools[0] ? "then_branch" : "else_branch")
        return try ctx.runSubgraph(branch, [])
    }
    b.add("Loop") { ctx in
        let body = try ctx.attributes.graph("body")
        let maxTrips = ctx.optionalInput(0).map { $0.int64s.first ?? 0 }
        var cond = ctx.optionalInput(1).map { $0.bools.first ?? false } ?? true
        var carried = (2..<max(2, ctx.inputs.count)).compactMap { ctx.inputs[$0] }
        guard carried.count == ctx.inputs.count - 2 || ctx.inputs.count < 2 else { throw ctx.fail("a loop-carried input is missing") }
        let scanCount = body.outputTypes.count - 1 - carried.count
        guard scanCount >= 0 else { throw ctx.fail("body has \(body.outputTypes.count) outputs for \(carried.count) loop-carried values") }
        var scans = [[Tensor]](repeating: [], count: scanCount)
        var i: Int64 = 0
        let limit: Int64 = 1 << 24
        while cond && (maxTrips.map { i < $0 } ?? true) {
            guard i < limit else { throw ctx.fail("loop ran more than \(limit) iterations") }
            let outs = try ctx.runSubgraph(body, [.scalar(i), try Tensor(bools: [cond], shape: [])] + carried)
            guard outs.count == body.outputTypes.count else { throw ctx.fail("body produced \(outs.count) outputs, declared \(body.outputTypes.count)") }
            cond = outs[0].bools.first ?? false
            carried = Array(outs[1..<(1 + carried.count)])
            for k in 0..<scanCount { scans[k].append(outs[1 + carried.count + k]) }
            i += 1
        }
        var results = carried
        for k in 0..<scanCount {
            if scans[k].isEmpty {
                let declared = body.outputTypes[1 + carried.count + k]
                let type = declared.elementType ?? .float
                let inner = declared.concreteShape ?? []
                results.append(try Tensor.zeros(type, shape: [0] + inner))
            } else {
                results.append(try stack(scans[k], ctx: ctx))
            }
        }
        return results
    }
    b.add("Scan", since: 9) { ctx in
        let body = try ctx.attributes.graph("body")
        guard let m = try ctx.attributes.int("num_scan_inputs"), m >= 0, m <= ctx.inputs.count else {
            throw ctx.fail("attribute num_scan_inputs is missing or larger than the number of inputs")
        }
        let inputs = ctx.inputs.compactMap { $0 }
        let n = inputs.count - m
        var states = Array(inputs[..<n])
        let scanInputs = Array(inputs[n...])
        let inAxes = try ctx.attributes.ints("scan_input_axes") ?? Array(repeating: 0, count: m)
        let inDirs = try ctx.attributes.ints("scan_input_directions") ?? Array(repeating: 0, count: m)
        let scanOutCount = body.outputTypes.count - n
        let outAxes = try ctx.attributes.ints("scan_output_axes") ?? Array(repeating: 0, count: scanOutCount)
        let outDirs = try ctx.attributes.ints("scan_output_directions") ?? Array(repeating: 0, count: scanOutCount)
        guard inAxes.count == m, inDirs.count == m, outAxes.count == scanOutCount, outDirs.count == scanOutCount else {
            throw ctx.fail("scan axes/directions lengths do not match the number of scan inputs and outputs")
        }
        // Move each scan axis to the front so iteration t reads slice t.
        let fronted = try scanInputs.enumerated().map { k, t -> Tensor in
            let axis = try ctx.axis(inAxes[k], rank: t.rank)
            var perm = Array(0..<t.rank)
            perm.remove(at: axis)
            perm.insert(axis, at: 0)
            return try Movement.transpose(t, perm: perm)
        }
        guard let length = fronted.first?.shape.first else { throw ctx.fail("Scan needs at least one scan input") }
        for t in fronted where t.shape.first != length { throw ctx.fail("scan inputs have different sequence lengths") }
        var outs = [[Tensor]](repeating: [], count: scanOutCount)
        for step in 0..<length {
            let slices = try fronted.enumerated().map { k, t -> Tensor in
                let s = inDirs[k] == 1 ? length - 1 - step : step
                let inner = Array(t.shape.dropFirst())
                let size = inner.reduce(1, *)
                return try t.gathered(Array(s * size..<(s + 1) * size), shape: inner)
            }
            let results = try ctx.runSubgraph(body, states + slices)
            states = Array(results[..<n])
            for k in 0..<scanOutCount { outs[k].append(results[n + k]) }
        }
        var final = states
        for k in 0..<scanOutCount {
            let ordered = outDirs[k] == 1 ? Array(outs[k].reversed()) : outs[k]
            let stacked = try stack(ordered, ctx: ctx)
            let axis = try ctx.axis(outAxes[k], rank: stacked.rank)
            var perm = Array(1..<stacked.rank)
            perm.insert(0, at: axis)
            final.append(axis == 0 ? stacked : try Movement.transpose(stacked, perm: perm))
        }
        return final
    }
}
