import AnvilCore

/// Recurrent layers on Swift kernels over plan memory.
enum RecurrentLowering {
    static let entries = [
        LoweringEntry(kind: .lstm, ops: ["LSTM"], output: .plain, multipleOutputs: true, lower: lstm),
    ]

    /// An LSTM with constant float weights (biases and peepholes constant too) and the
    /// default activations (`SwiftLSTM`); its sequence lengths and initial states may be
    /// computed at run time.
    static func lstm(_ l: LayerLowering) throws -> LayerDecision? {
        let a = l.attributes
        guard l.layer.domain.isEmpty, let xv = l.value(0), xv.dataType == .float, xv.shape.count == 3,
              let hidden = try a.int("hidden_size"), hidden > 0, try a.floats("activation_alpha") == nil, try a.floats("activation_beta") == nil
        else { return nil }
        let direction = try a.string("direction", "forward")
        guard ["forward", "reverse", "bidirectional"].contains(direction) else { return nil }
        let dirs = direction == "bidirectional" ? 2 : 1
        if let names = try a.strings("activations") {
            guard names.map({ $0.lowercased() }) == Array([String](repeating: "", count: dirs).map { _ in ["sigmoid", "tanh", "tanh"] }.joined()) else { return nil }
        }
        let batchMajor = try a.int("layout", 0) == 1
        let (seq, batch, input) = batchMajor ? (xv.shape[1], xv.shape[0], xv.shape[2]) : (xv.shape[0], xv.shape[1], xv.shape[2])
        let g = 4 * hidden
        func floats(_ i: Int, _ shape: [Int]) -> [Float]?? {
            guard l.present(i) else { return .some(nil) }
            guard let t = l.constant(i), t.dataType == .float, t.shape == shape else { return nil }
            return .some(t.floats)
        }
        guard let w = floats(1, [dirs, g, input]) ?? nil, let r = floats(2, [dirs, g, hidden]) ?? nil,
              let b = floats(3, [dirs, 2 * g]), let p = floats(7, [dirs, 3 * hidden]) else { return nil }
        // Sequence lengths and initial states: absent, constant or computed.
        var lengths: PlanValue?
        if l.present(4) {
            guard let v = try l.operand(4), v.dataType == .int32 || v.dataType == .int64, v.shape == [batch] else { return nil }
            lengths = try l.plan.plain(v)
        }
        let stateShape = batchMajor ? [batch, dirs, hidden] : [dirs, batch, hidden]
        func state(_ i: Int) throws -> PlanValue?? {
            guard l.present(i) else { return .some(nil) }
            guard let v = try l.operand(i), v.dataType == .float, v.shape == stateShape else { return nil }
            return .some(try l.plan.plain(v))
        }
        guard let h0 = try state(5), let c0 = try state(6) else { return nil }
        let yShape = batchMajor ? [batch, seq, dirs, hidden] : [seq, dirs, batch, hidden]
        var outputs: [PlanValue?] = []
        for (i, shape) in [yShape, stateShape, stateShape].enumerated() {
            guard i < l.layer.outputs.count, !l.layer.outputs[i].isEmpty else { outputs.append(nil); continue }
            guard try l.outputType(i) == (.float, shape) else { return nil }
            outputs.append(l.plan.newValue(l.layer.outputs[i], .float, shape))
        }
        let x = try l.plan.plain(xv)
        let kernel = SwiftLSTM(seq: seq, batch: batch, input: input, hidden: hidden, directions: dirs, batchMajor: batchMajor,
                               reverse: direction == "reverse", clip: try a.float("clip"), inputForget: try a.int("input_forget", 0) != 0,
                               w: w, r: r, b: b, p: p, allocate: l.plan.ownedFloats, allocateInts: l.plan.ownedInts)
        let wide = lengths?.dataType == .int64, name = l.layer.name
        let reads = [x] + [lengths, h0, c0].compactMap { $0 }
        l.plan.steps.append(SwiftStep(layer: name, reads: reads, writes: outputs.compactMap { $0 }) { plan in
            func floats(_ v: PlanValue?) -> UnsafeMutablePointer<Float>? { v.map { plan.address($0).assumingMemoryBound(to: Float.self) } }
            try kernel.run(x: floats(x)!, sequenceLengths: lengths.map { UnsafeRawPointer(plan.address($0)) }, wideLengths: wide,
                           h0: floats(h0).map { UnsafePointer($0) }, c0: floats(c0).map { UnsafePointer($0) },
                           y: floats(outputs[0]), yh: floats(outputs[1]), yc: floats(outputs[2]), layer: name)
        })
        return LayerDecision(kernel: .lstm, layout: .plain)
    }
}
