import AnvilCore
import AnvilIR
import AnvilKernels

/// Shape inference of the recurrent ops (and ONNX Runtime's DynamicQuantizeLSTM): Y [seq, directions, batch, hidden] (batch first
/// with layout 1), and the final states [directions, batch, hidden].
func registerRecurrentInference(_ b: inout RegistryBuilder) {
    b.infer(["RNN", "GRU", "LSTM"], recurrentOutputs)
    b.infer(["DynamicQuantizeLSTM"], domain: microsoftDomain, recurrentOutputs)
}

/// The outputs of RNN, GRU, LSTM (and ops of their shape) from X and the attributes.
let recurrentOutputs: InferenceRule = { ctx in
    let element = ctx.type(0).elementType
    guard let x = ctx.dims(0), x.count == 3, let hidden = try ctx.attributes.int("hidden_size") else { return Array(repeating: facts(element, nil), count: 3) }
    let dirs: Dim = .known(try ctx.attributes.string("direction", "forward") == "bidirectional" ? 2 : 1)
    let batchMajor = try ctx.attributes.int("layout", 0) == 1
    let (seq, batch) = batchMajor ? (x[1], x[0]) : (x[0], x[1])
    let y: [Dim] = batchMajor ? [batch, seq, dirs, .known(hidden)] : [seq, dirs, batch, .known(hidden)]
    let state: [Dim] = batchMajor ? [batch, dirs, .known(hidden)] : [dirs, batch, .known(hidden)]
    return [facts(element, y), facts(element, state), facts(element, state)]
}
