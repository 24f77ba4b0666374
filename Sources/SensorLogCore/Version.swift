/// The version both executables report (`--version`) and sensorlogd logs at start-up.
public enum SensorLogVersion {
    public static let current = "0.14.1"
}
