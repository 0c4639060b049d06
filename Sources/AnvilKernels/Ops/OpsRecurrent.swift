import AnvilCore

func registerRecurrent(_ b: inout KernelTableBuilder) {
    let cells: [(String, Recurrent.Cell, [String])] = [
        ("RNN", .rnn, ["Tanh"]), ("GRU", .gru, ["Sigmoid", "Tanh"]), ("LSTM", .lstm, ["Sigmoid", "Tanh", "Tanh"]),
    ]
    for (name, cell, defaults) in cells {
        b.add(name) { ctx in
            let p = try recurrentParameters(ctx, cell, defaults: defaults)
            let outs = try named(ctx) {
                try Recurrent.run(x: ctx.input(0), w: ctx.input(1), r: ctx.input(2), b: ctx.optionalInput(3), sequenceLengths: ctx.optionalInput(4),
                                  initialH: ctx.optionalInput(5), initialC: cell == .lstm ? ctx.optionalInput(6) : nil,
                                  peepholes: cell == .lstm ? ctx.optionalInput(7) : nil, p)
            }
            return Array(outs.prefix(ctx.outputCount))
        }
    }
    // ONNX Runtime's dynamically quantized LSTM (`QuantizedRecurrent`): int8/uint8 W and R
    // transposed to [directions, input or hidden, 4·hidden], with their scales and zero points.
    b.add("DynamicQuantizeLSTM", domain: microsoftDomain) { ctx in
        let p = try recurrentParameters(ctx, .lstm, defaults: ["Sigmoid", "Tanh", "Tanh"])
        let outs = try named(ctx) {
            try QuantizedRecurrent.dynamicQuantizeLSTM(x: ctx.input(0), w: ctx.input(1), r: ctx.input(2), b: ctx.optionalInput(3), sequenceLengths: ctx.optionalInput(4),
                                                       initialH: ctx.optionalInput(5), initialC: ctx.optionalInput(6), peepholes: ctx.optionalInput(7),
                                                       wScale: ctx.input(8), wZeroPoint: ctx.input(9), rScale: ctx.input(10), rZeroPoint: ctx.input(11), p)
        }
        return Array(outs.prefix(ctx.outputCount))
    }
    b.add1("Einsum", since: 12) { ctx in
        guard let equation = try ctx.attributes.string("equation") else { throw ctx.fail("attribute equation is required") }
        return try named(ctx) { try EinsumKernel.run(equation, ctx.inputs.compactMap { $0 }) }
    }
}

/// The parameters of an RNN, GRU or LSTM node from its attributes, with ONNX's defaults.
func recurrentParameters(_ ctx: EvalContext, _ cell: Recurrent.Cell, defaults: [String]) throws -> Recurrent.Parameters {
    let a = ctx.attributes
    guard let hidden = try a.int("hidden_size"), hidden > 0 else { throw ctx.fail("attribute hidden_size is required and must be positive") }
    var p = Recurrent.Parameters(cell: cell, hidden: hidden)
    p.direction = try a.string("direction", "forward")
    guard ["forward", "reverse", "bidirectional"].contains(p.direction) else { throw ctx.fail("direction '\(p.direction)' is not forward, reverse or bidirectional") }
    let dirs = p.direction == "bidirectional" ? 2 : 1
    let names = try a.strings("activations") ?? Array((0..<dirs).map { _ in defaults }.joined())
    let alphas = try a.floats("activation_alpha"), betas = try a.floats("activation_beta")
    p.activations = try names.enumerated().map { i, n in
        try named(ctx) { try Recurrent.activation(n, alpha: alphas.flatMap { i < $0.count ? Double($0[i]) : nil }, beta: betas.flatMap { i < $0.count ? Double($0[i]) : nil }) }
    }
    p.clip = try a.float("clip").map { Double($0) }
    p.linearBeforeReset = try a.int("linear_before_reset", 0) != 0
    p.inputForget = try a.int("input_forget", 0) != 0
    p.batchMajor = try a.int("layout", 0) == 1
    return p
}
