import AnvilCore
import AnvilIR
import AnvilKernels
import AnvilOps

/// Folds a zero-valued constant Pad of the spatial axes into the convolution that
/// reads it: Conv(Pad(x)) becomes Conv(x) with the pads added to its own, which may
/// then be asymmetric. TensorFlow's SAME padding of strided convolutions (tf2onnx,
/// Keras) and explicit padding layers in PyTorch and Paddle models export this way;
/// left alone, every such Pad copies the whole activation in plain layout.
public struct FoldPadIntoConv: Pass {
    public let name = "fold-pad-into-conv"
    public let summary = "fold a constant zero Pad of the spatial axes into the pads of the Conv that reads it"
    public init() {}
    public func run(_ context: PassContext) throws -> Bool { try RewriteDriver([Self.rule]).run(context) }

    static let rule = RewriteRule("pad into conv", roots: ["Conv", "FusedConv"]) { conv, ctx in
        guard conv.domain.isEmpty ? conv.opType == "Conv" : (conv.domain == anvilDomain && conv.opType == "FusedConv"),
              let pad = ctx.producer(conv.inputs[0]), pad.opType == "Pad", pad.domain.isEmpty,
              ctx.uses.soleConsumer(pad.outputs[0]) === conv,
              let rank = ctx.type(pad.inputs[0]).rank ?? ctx.type(conv.inputs[0]).rank, rank >= 3,
              let padPads = zeroPads(pad, rank: rank, ctx) else { return nil }
        // Batch and channel axes must not be padded; negative pads crop and cannot fold.
        let spatial = rank - 2
        guard padPads[0] == 0, padPads[1] == 0, padPads[rank] == 0, padPads[rank + 1] == 0, padPads.allSatisfy({ $0 >= 0 }) else { return nil }
        let reader = AttributeReader(node: conv)
        let autoPad = (try? reader.string("auto_pad", "NOTSET")) ?? "NOTSET"
        guard autoPad == "NOTSET" || autoPad == "VALID" else { return nil }
        var convPads = autoPad == "VALID" ? Array(repeating: 0, count: 2 * spatial)
                                          : ((try? reader.ints("pads")) ?? nil) ?? Array(repeating: 0, count: 2 * spatial)
        guard convPads.count == 2 * spatial else { return nil }
        for d in 0..<spatial {
            convPads[d] += padPads[2 + d]
            convPads[spatial + d] += padPads[rank + 2 + d]
        }
        var attributes = conv.attributes
        attributes["auto_pad"] = nil
        attributes["pads"] = .ints(convPads.map { Int64($0) })
        var inputs = conv.inputs
        inputs[0] = pad.inputs[0]
        let folded = Node(name: conv.name, opType: conv.opType, domain: conv.domain, inputs: inputs, outputs: conv.outputs,
                          attributes: attributes, fusedFrom: pad.fusedFrom + conv.fusedFrom)
        return Patch(statistic: "Pad folded into \(conv.opType)", remove: [pad, conv], add: [folded])
    }

    /// The Pad's pads over all `rank` axes ([begin…, end…]) when it is a constant-mode
    /// pad with value zero and known pads; nil otherwise.
    static func zeroPads(_ pad: Node, rank: Int, _ ctx: RewriteContext) -> [Int]? {
        func present(_ i: Int) -> Bool { i < pad.inputs.count && !pad.inputs[i].isEmpty }
        guard let p = try? KnownPad(opset: ctx.pass.opset(), attributes: AttributeReader(node: pad), rank: rank, present: present,
                                       input: { present($0) ? ctx.constant(pad.inputs[$0]) : nil }), p.value == 0 else { return nil }
        return p.pads
    }
}
