import AnvilCore

/// The input shapes an engine is built for, as trtexec's --minShapes/--optShapes/
/// --maxShapes (or --shapes, where all three are equal). Inputs outside the
/// profile are refused; inputs without an entry accept any shape.
public struct ShapeProfile: Equatable, Sendable {
    /// The size a dynamic dimension other than the batch gets where no shape is given
    /// (tactic timing, the builder's plan, `bench` and `inspect` defaults): large enough
    /// for the windows of typical vision and sequence models, small enough to be quick.
    public static let sampleSize = 64
    /// Larger sizes tried, in order, where `sampleSize` does not fit a model (its types cannot
    /// be inferred, it leaves values empty, or a run on zeros fails): up to a second of 16 kHz audio.
    public static let largerSampleSizes = [256, 1024, 16000]

    /// Concrete shapes for inputs' declared dims: a dynamic batch (a dimension that leads
    /// some input) is 1, every other dynamic size `size`; a symbol gets one size wherever
    /// it appears, so inputs that share it stay consistent (a state [2, batch, 128]).
    public static func samples(_ inputs: [(name: String, dims: [Dim])], size: Int = sampleSize) -> [String: [Int]] {
        var leading = Set<String>()
        for input in inputs { if case .symbol(let s)? = input.dims.first { leading.insert(s) } }
        var shapes: [String: [Int]] = [:]
        for input in inputs {
            shapes[input.name] = input.dims.enumerated().map { i, d in
                switch d {
                case .known(let v): v
                case .symbol(let s): leading.contains(s) ? 1 : size
                case .unknown: i == 0 ? 1 : size
                }
            }
        }
        return shapes
    }

    public var min: [String: [Int]] = [:]
    public var opt: [String: [Int]] = [:]
    public var max: [String: [Int]] = [:]

    public init(min: [String: [Int]] = [:], opt: [String: [Int]] = [:], max: [String: [Int]] = [:]) {
        self.min = min
        self.opt = opt
        self.max = max
    }

    public var isEmpty: Bool { min.isEmpty }
    public var names: [String] { min.keys.sorted() }

    /// Whether the input's shape is fixed (min = max).
    public func isFixed(_ name: String) -> Bool { min[name] != nil && min[name] == max[name] }

    /// Parses trtexec's form: comma-separated `name:AxBxC` entries (the name ends at
    /// the last colon), from one or more option values.
    public static func parse(_ values: [String], flag: String) throws -> [String: [Int]] {
        var out: [String: [Int]] = [:]
        for value in values {
            for entry in value.split(separator: ",", omittingEmptySubsequences: true) {
                guard let colon = entry.lastIndex(of: ":"), colon != entry.startIndex else {
                    throw AnvilError.invalidArgument("\(flag) '\(entry)' is not name:AxBxC")
                }
                let name = String(entry[..<colon]).trimmingCharacters(in: .whitespaces)
                let text = entry[entry.index(after: colon)...]
                let dims = text.isEmpty ? [] : try text.split(separator: "x", omittingEmptySubsequences: false).map { d -> Int in
                    guard let v = Int(d.trimmingCharacters(in: .whitespaces)), v >= 0 else {
                        throw AnvilError.invalidArgument("\(flag) '\(entry)': dimension '\(d)' is not a non-negative integer")
                    }
                    return v
                }
                guard out[name] == nil else { throw AnvilError.invalidArgument("\(flag) names input '\(name)' twice") }
                out[name] = dims
            }
        }
        return out
    }

    /// Builds a profile from the three option sets (`shapes` sets all three).
    public static func from(shapes: [String: [Int]], min: [String: [Int]], opt: [String: [Int]], max: [String: [Int]]) throws -> ShapeProfile {
        if !shapes.isEmpty {
            guard min.isEmpty, opt.isEmpty, max.isEmpty else {
                throw AnvilError.invalidArgument("give either --shapes or --minShapes/--optShapes/--maxShapes, not both")
            }
            return ShapeProfile(min: shapes, opt: shapes, max: shapes)
        }
        guard Set(min.keys) == Set(opt.keys), Set(opt.keys) == Set(max.keys) else {
            throw AnvilError.invalidArgument("--minShapes, --optShapes and --maxShapes must name the same inputs")
        }
        for name in min.keys {
            let lo = min[name]!, o = opt[name]!, hi = max[name]!
            guard lo.count == o.count, o.count == hi.count else {
                throw AnvilError.invalidArgument("input '\(name)': min \(lo), opt \(o) and max \(hi) shapes have different ranks")
            }
            guard zip(lo, o).allSatisfy({ $0 <= $1 }), zip(o, hi).allSatisfy({ $0 <= $1 }) else {
                throw AnvilError.invalidArgument("input '\(name)': shapes must satisfy min \(lo) ≤ opt \(o) ≤ max \(hi) in every dimension")
            }
        }
        return ShapeProfile(min: min, opt: opt, max: max)
    }

    /// Checks profile entries against the declared inputs (names, ranks, fixed dimensions).
    public func check(against inputs: [(name: String, type: TensorType)]) throws {
        for name in names {
            guard let declared = inputs.first(where: { $0.name == name }) else {
                throw AnvilError.invalidArgument("the shape profile names '\(name)', which is not a model input (inputs: \(inputs.map(\.name).joined(separator: ", ")))")
            }
            guard let dims = declared.type.dims else { continue }
            for shape in [min[name]!, opt[name]!, max[name]!] {
                guard shape.count == dims.count else {
                    throw AnvilError.invalidArgument("input '\(name)' has rank \(dims.count) (\(declared.type)); the profile gives \(shape)")
                }
                for (i, d) in dims.enumerated() {
                    if let v = d.value, v != shape[i] {
                        throw AnvilError.invalidArgument("input '\(name)' dimension \(i) is fixed at \(v) (\(declared.type)); the profile gives \(shape)")
                    }
                }
            }
        }
    }

    /// Refuses an input outside the profile.
    public func admit(_ name: String, _ shape: [Int]) throws {
        guard let lo = min[name], let hi = max[name] else { return }
        guard shape.count == lo.count, zip(lo, shape).allSatisfy({ $0 <= $1 }), zip(shape, hi).allSatisfy({ $0 <= $1 }) else {
            throw AnvilError.invalidTensor(name: name, reason: "shape \(shape) is outside the engine's profile (min \(lo), max \(hi)): "
                                           + "rebuild with wider --minShapes/--maxShapes")
        }
    }

    // MARK: Encoding (the PROFILE section)

    public func encoded() -> [UInt8] {
        var w = EngineCodec.Writer()
        w.int(names.count)
        for name in names {
            w.string(name)
            for shape in [min[name]!, opt[name]!, max[name]!] { w.int(shape.count); for d in shape { w.int(d) } }
        }
        return w.bytes
    }

    public static func decode(_ bytes: UnsafeRawBufferPointer, file: String) throws -> ShapeProfile {
        var r = EngineCodec.Reader(bytes: bytes, file: file)
        var p = ShapeProfile()
        for _ in 0..<(try r.count(minimum: 32)) {
            let name = try r.string()
            var shapes: [[Int]] = []
            for _ in 0..<3 {
                let rank = try r.count(minimum: 8)
                guard rank <= 64 else { throw r.fail("profile rank \(rank) is impossible") }
                shapes.append(try (0..<rank).map { _ in
                    let d = try r.int()
                    guard d >= 0 else { throw r.fail("profile dimension \(d) is negative") }
                    return d
                })
            }
            p.min[name] = shapes[0]; p.opt[name] = shapes[1]; p.max[name] = shapes[2]
        }
        guard r.position == bytes.count else { throw r.fail("\(bytes.count - r.position) bytes after the shape profile") }
        return p
    }
}
