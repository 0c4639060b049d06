import AnvilCore
import COneDNN

/// A memory layout chosen by oneDNN (opaque outside this module).
public struct DNNLLayout {
    var descriptor: dnnl_memory_desc_t
    init(_ d: dnnl_memory_desc_t) { descriptor = d }

    /// Bytes a tensor in this layout occupies (blocked layouts pad channels).
    public var byteCount: Int {
        var d = descriptor
        return anvil_dnnl_md_size(&d)
    }

    /// The plain row-major layout of a float tensor.
    public static func plain(_ shape: [Int]) throws -> DNNLLayout {
        let tags: [Int: dnnl_format_tag_t] = [1: dnnl_a, 2: dnnl_ab, 3: dnnl_abc, 4: dnnl_abcd, 5: dnnl_abcde]
        guard let tag = tags[shape.count] else { throw AnvilError.invalidTensor(name: "layout", reason: "rank \(shape.count) is not supported") }
        return DNNLLayout(try memoryDescriptor(shape, tag))
    }

    /// Whether two layouts are the same (no reorder needed).
    public func matches(_ other: DNNLLayout) -> Bool {
        var a = descriptor, b = other.descriptor
        return anvil_dnnl_md_equal(&a, &b) != 0
    }
}

/// Converts a tensor between two layouts (plain ↔ blocked).
public final class DNNLReorder {
    let primitive: DNNLPrimitive
    let from: DNNLLayout
    let to: DNNLLayout
    let engine: DNNLEngine

    public init(engine: DNNLEngine, from: DNNLLayout, to: DNNLLayout) throws {
        primitive = try reorderPrimitive(from: from.descriptor, to: to.descriptor, engine: engine)
        self.from = from
        self.to = to
        self.engine = engine
    }

    public func run(stream: DNNLStream, from source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer) throws {
        let a = try DNNLMemory(from.descriptor, engine: engine, data: UnsafeMutableRawPointer(mutating: source))
        let b = try DNNLMemory(to.descriptor, engine: engine, data: destination)
        try primitive.execute(stream, [(DNNL_ARG_FROM, a), (DNNL_ARG_TO, b)])
    }
}
