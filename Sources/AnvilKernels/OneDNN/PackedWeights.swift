import AnvilCore
import COneDNN

/// A oneDNN memory layout in the canonical form engine files store
/// (`anvil_dnnl_md_encode`): rank, element type, dimensions, padded dimensions,
/// strides and inner blocks; or, for Winograd-transformed weights, -1, element
/// type, rank, dimensions and the transform's parameters.
public struct LayoutCode: Hashable, Sendable, Comparable {
    public let values: [Int64]

    public init(values: [Int64]) { self.values = values }

    /// The code of a descriptor; nil when it is not representable.
    init?(_ descriptor: dnnl_memory_desc_t) {
        var md = descriptor
        var out = [Int64](repeating: 0, count: Int(ANVIL_MD_CODE_MAX))
        let n = anvil_dnnl_md_encode(&md, &out)
        guard n > 0 else { return nil }
        values = Array(out.prefix(Int(n)))
    }

    /// The descriptor and the bytes it can touch; nil for an invalid code (checked field by field).
    var descriptor: (dnnl_memory_desc_t, extent: Int)? {
        var md = dnnl_memory_desc_t()
        var extent = 0
        guard values.count <= Int(ANVIL_MD_CODE_MAX), anvil_dnnl_md_decode(values, Int32(values.count), &md, &extent) == 0 else { return nil }
        return (md, extent)
    }

    public static func < (a: LayoutCode, b: LayoutCode) -> Bool { a.values.lexicographicallyPrecedes(b.values) }

    /// Winograd-transformed weights: usable in place by a kernel with exactly this
    /// layout, but never decoded into a descriptor (no reorder leads back to plain).
    public var isWinograd: Bool { values.first == -1 }

    /// The same layout with elements of `type` (a blocked layout's offsets count elements, so
    /// the copy converted element by element has this layout); nil for Winograd weights.
    func retyped(_ type: dnnl_data_type_t) -> LayoutCode? {
        guard !isWinograd, values.count > 1 else { return nil }
        var v = values
        v[1] = Int64(type.rawValue)
        return LayoutCode(values: v)
    }

    /// The dimensions the code records; nil when it is too short for its rank.
    var dims: [Int64]? {
        let (rankAt, dimsAt) = isWinograd ? (2, 3) : (0, 2)
        guard values.count > rankAt, (1...6).contains(values[rankAt]), values.count >= dimsAt + Int(values[rankAt]) else { return nil }
        return Array(values[dimsAt..<(dimsAt + Int(values[rankAt]))])
    }
}

/// A constant's weights prepacked for a oneDNN kernel, as an engine file stores
/// them: the layout of the plain constant (`user`), the packed layout, and the
/// packed bytes (in the mapped file, used in place).
public struct PackedWeights: @unchecked Sendable {
    public let constant: String
    public let user: LayoutCode
    public let packed: LayoutCode
    public let data: UnsafeRawBufferPointer

    public init(constant: String, user: LayoutCode, packed: LayoutCode, data: UnsafeRawBufferPointer) {
        self.constant = constant
        self.user = user
        self.packed = packed
        self.data = data
    }

    /// Checks the layouts against the constant's type and shape and the data's size;
    /// a reason when they do not fit.
    public func problem(type: DataType, shape: [Int]) -> String? {
        guard let (user, userExtent) = user.descriptor, let userDims = self.user.dims, let packedDims = self.packed.dims else { return "has an invalid layout" }
        guard type == .float, user.data_type == dnnl_f32 else { return "is not FP32" }
        guard let element = packedType else { return "is packed neither as FP32, BF16 nor FP16" }
        guard let count = ShapeMath.elementCount(shape), userDims == packedDims, ShapeMath.elementCount(userDims.map { Int($0) }) == count,
              userExtent <= count * 4 else { return "does not fit the constant's shape \(shape)" }
        // Winograd weights are only used in place by a kernel whose own layout (and size) matches.
        if packed.isWinograd { return nil }
        guard let (_, packedExtent) = packed.descriptor else { return "has an invalid layout" }
        // A packed layout covers at least its elements (this also bounds what unpacking allocates).
        guard packedExtent >= count * element.byteSize, packedExtent <= data.count else { return "has \(data.count) bytes for layout of \(packedExtent)" }
        return nil
    }

    /// The element type of the packed copy: FP32; BF16 for a BF16 kernel's; FP16 for an FP16
    /// layer's (widened to FP32 when the engine loads). The unpacked values of a BF16 or FP16
    /// copy are the constant rounded to that type.
    public var packedType: DataType? {
        switch packed.values.count > 1 ? packed.values[1] : -1 {
        case Int64(dnnl_f32.rawValue): .float
        case Int64(dnnl_bf16.rawValue): .bfloat16
        case Int64(dnnl_f16.rawValue): .float16
        default: nil
        }
    }

    /// Whether the plain constant can be reordered back from these bytes (not from Winograd weights).
    public var isUnpackable: Bool { !packed.isWinograd }

    /// The plain constant, reordered back from the packed bytes (for layers that need it plain).
    func unpacked(shape: [Int], engine: DNNLEngine) throws -> Tensor {
        guard let (user, _) = user.descriptor, let (packed, _) = packed.descriptor else {
            throw AnvilError.invalidTensor(name: constant, reason: "prepacked weights have an invalid layout")
        }
        var values = [Float](repeating: 0, count: ShapeMath.elementCount(shape) ?? 0)
        try values.withUnsafeMutableBytes { out in
            let from = try DNNLMemory(packed, engine: engine, data: UnsafeMutableRawPointer(mutating: data.baseAddress!))
            let to = try DNNLMemory(user, engine: engine, data: out.baseAddress!)
            try reorderPrimitive(from: packed, to: user, engine: engine).execute(try DNNLStream(engine: engine), [(DNNL_ARG_FROM, from), (DNNL_ARG_TO, to)])
        }
        return try Tensor(floats: values, shape: shape)
    }
}

/// Constant weights as a oneDNN kernel receives them: the shape, the plain values
/// on demand, and prepacked copies from the engine file that the kernel uses in
/// place when its layout matches one.
public struct KernelWeights: @unchecked Sendable {
    public let name: String
    public let dataType: DataType
    public let shape: [Int]
    let plain: () throws -> Tensor
    let packed: [PackedWeights]
    /// Whether a kernel's packed copy is a reorder of the constant (not scaled), so a file may store it.
    let exact: Bool
    /// FP16 storage (an FP16 layer's): the values are the constant rounded to FP16, and the
    /// file stores the packed copy in FP16, widened to FP32 for the kernel when it loads.
    private(set) var half = false

    public init(name: String, dataType: DataType, shape: [Int], packed: [PackedWeights], plain: @escaping () throws -> Tensor) {
        self.init(name: name, dataType: dataType, shape: shape, packed: packed, exact: true, plain: plain)
    }

    init(name: String, dataType: DataType, shape: [Int], packed: [PackedWeights], exact: Bool, plain: @escaping () throws -> Tensor) {
        self.exact = exact
        self.name = name
        self.dataType = dataType
        self.shape = shape
        self.packed = packed
        self.plain = plain
    }

    /// Weights given as a tensor (no prepacked copies).
    public init(_ tensor: Tensor, name: String = "") {
        self.init(name: name, dataType: tensor.dataType, shape: tensor.shape, packed: []) { tensor }
    }

    public var rank: Int { shape.count }

    /// The same weights rounded to FP16 and stored so (an FP16 layer's).
    func halved() -> KernelWeights {
        let plain = self.plain, shape = self.shape
        var copy = KernelWeights(name: name, dataType: dataType, shape: shape, packed: packed, exact: exact) { try Tensor(floats: HalfFloats.rounded(try plain().floats), shape: shape) }
        copy.half = true
        return copy
    }

    /// The same weights scaled by `alpha` (Gemm's α): prepacked copies no longer apply.
    func scaled(_ alpha: Float) -> KernelWeights {
        guard alpha != 1 else { return self }
        let plain = self.plain, shape = self.shape
        var copy = KernelWeights(name: name, dataType: dataType, shape: shape, packed: [], exact: false) { try Tensor(floats: try plain().floats.map { $0 * alpha }, shape: shape) }
        copy.half = half
        return copy
    }
}

/// IEEE half-precision conversions of float buffers (F16C where the CPU has it).
enum HalfFloats {
    /// The values rounded to FP16 (nearest even), as floats.
    static func rounded(_ values: [Float]) -> [Float] {
        var half = [UInt16](repeating: 0, count: values.count), out = [Float](repeating: 0, count: values.count)
        anvil_f32_to_f16(values, Int64(values.count), &half)
        anvil_f16_to_f32(half, Int64(values.count), &out)
        return out
    }
}
