/// One record of a TensorBoard event file: the subset of TensorFlow's
/// `Event` message (`tensorboard/compat/proto/event.proto`) that Diffuse writes.
///
/// Field numbers, from `event.proto` and `summary.proto`:
///
///     Event         wall_time = 1 (double), step = 2 (int64),
///                   file_version = 3 (string), summary = 5 (Summary)
///     Summary       value = 1 (repeated Value)
///     Value         tag = 1 (string), simple_value = 2 (float), image = 4 (Image)
///     Image         height = 1, width = 2, colorspace = 3 (int32),
///                   encoded_image_string = 4 (bytes)
public struct TensorBoardEvent: Equatable, Sendable {
    /// An encoded image as TensorBoard's `Summary.Image` stores it.
    public struct Image: Equatable, Sendable {
        /// Height in pixels.
        public var height: Int
        /// Width in pixels.
        public var width: Int
        /// 1 grayscale, 2 grayscale + alpha, 3 RGB, 4 RGBA.
        public var colorspace: Int
        /// The encoded image (PNG) bytes.
        public var encodedImage: [UInt8]

        /// An image summary of `encodedImage`, `width` × `height` with `colorspace` channels.
        public init(height: Int, width: Int, colorspace: Int, encodedImage: [UInt8]) {
            self.height = height
            self.width = width
            self.colorspace = colorspace
            self.encodedImage = encodedImage
        }
    }

    /// The payload of one `Summary.Value`.
    public enum Content: Equatable, Sendable {
        /// A scalar (`simple_value`).
        case scalar(Float)
        /// An encoded image (`image`).
        case image(Image)
    }

    /// One tagged value of a summary.
    public struct Value: Equatable, Sendable {
        /// The series name shown by TensorBoard, such as `train/loss`.
        public var tag: String
        /// The scalar or image.
        public var content: Content

        /// A value tagged `tag`.
        public init(tag: String, content: Content) {
            self.tag = tag
            self.content = content
        }
    }

    /// What the event carries.
    public enum Payload: Equatable, Sendable {
        /// The header that starts every file, such as `brain.Event:2`.
        case fileVersion(String)
        /// A summary with one or more values.
        case summary([Value])
    }

    /// The version string TensorBoard expects in the first record.
    public static let currentFileVersion = "brain.Event:2"

    /// Seconds since 1970-01-01 UTC.
    public var wallTime: Double
    /// The training step (the x axis of TensorBoard's charts).
    public var step: Int64
    /// The file header or the summary.
    public var payload: Payload

    /// An event at `wallTime` and `step`.
    public init(wallTime: Double, step: Int64 = 0, payload: Payload) {
        self.wallTime = wallTime
        self.step = step
        self.payload = payload
    }

    /// The serialised `Event` protocol buffer (fields in number order, proto3 defaults omitted).
    public func encoded() -> [UInt8] {
        var event = ProtobufEncoder()
        event.appendDouble(field: 1, wallTime)
        event.appendInteger(field: 2, step)
        switch payload {
        case .fileVersion(let version):
            event.appendString(field: 3, version, evenIfEmpty: true)
        case .summary(let values):
            var summary = ProtobufEncoder()
            for value in values {
                summary.appendBytes(field: 1, Self.encode(value), evenIfEmpty: true)
            }
            event.appendBytes(field: 5, summary.bytes, evenIfEmpty: true)
        }
        return event.bytes
    }

    private static func encode(_ value: Value) -> [UInt8] {
        var encoder = ProtobufEncoder()
        encoder.appendString(field: 1, value.tag)
        switch value.content {
        case .scalar(let scalar):
            encoder.appendFloat(field: 2, scalar, evenIfZero: true)  // `simple_value` is in `oneof value`
        case .image(let image):
            var imageEncoder = ProtobufEncoder()
            imageEncoder.appendInteger(field: 1, Int64(image.height))
            imageEncoder.appendInteger(field: 2, Int64(image.width))
            imageEncoder.appendInteger(field: 3, Int64(image.colorspace))
            imageEncoder.appendBytes(field: 4, image.encodedImage)
            encoder.appendBytes(field: 4, imageEncoder.bytes, evenIfEmpty: true)
        }
        return encoder.bytes
    }
}
