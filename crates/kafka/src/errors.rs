//! Runnel errors as the Kafka error codes clients act on (retry after a metadata refresh, reset
//! an offset, rejoin a group, give up). The message travels too where the API has a field for it.

use kafka_protocol::error::ResponseError;
use runnel_types::{ErrorCode, RunnelError};

/// The Kafka error for `e`. `AuthorizationFailed` depends on what was refused; callers that know
/// (a group, the cluster) pass it in `denied`.
pub fn kafka_error(e: &RunnelError, denied: ResponseError) -> ResponseError {
    use ResponseError as K;
    match e.code {
        ErrorCode::UnknownTopic | ErrorCode::UnknownPartition => K::UnknownTopicOrPartition,
        ErrorCode::NotLeader => K::NotLeaderOrFollower,
        ErrorCode::OffsetOutOfRange => K::OffsetOutOfRange,
        ErrorCode::RecordTooLarge => K::MessageTooLarge,
        ErrorCode::InvalidConfig => K::InvalidConfig,
        ErrorCode::TopicAlreadyExists => K::TopicAlreadyExists,
        ErrorCode::CorruptBatch => K::CorruptMessage,
        ErrorCode::NotEnoughBrokers => K::InvalidReplicationFactor,
        ErrorCode::NotController => K::NotController,
        ErrorCode::Timeout => K::RequestTimedOut,
        ErrorCode::StaleEpoch => K::FencedLeaderEpoch,
        ErrorCode::InvalidRequest => K::InvalidRequest,
        ErrorCode::LeaderNotAvailable => K::LeaderNotAvailable,
        ErrorCode::Storage => K::KafkaStorageError,
        ErrorCode::NotCoordinator => K::NotCoordinator,
        ErrorCode::CoordinatorLoading => K::CoordinatorLoadInProgress,
        ErrorCode::UnknownMember => K::UnknownMemberId,
        ErrorCode::IllegalGeneration => K::IllegalGeneration,
        ErrorCode::RebalanceInProgress => K::RebalanceInProgress,
        ErrorCode::GroupNotEmpty => K::NonEmptyGroup,
        ErrorCode::UnknownGroup => K::GroupIdNotFound,
        ErrorCode::InconsistentGroupProtocol => K::InconsistentGroupProtocol,
        ErrorCode::NotEnoughReplicas => K::NotEnoughReplicas,
        ErrorCode::OutOfOrderSequence => K::OutOfOrderSequenceNumber,
        ErrorCode::InvalidProducerEpoch => K::InvalidProducerEpoch,
        ErrorCode::UnknownProducerId => K::UnknownProducerId,
        ErrorCode::AuthenticationFailed => K::SaslAuthenticationFailed,
        ErrorCode::AuthorizationFailed => denied,
        ErrorCode::NoCommittedOffset | ErrorCode::CommitRegression | ErrorCode::UnknownUser | ErrorCode::Internal => {
            K::UnknownServerError
        }
        #[allow(unreachable_patterns)]
        _ => K::UnknownServerError,
    }
}

/// The Kafka code of `e` for a request about a topic.
pub fn topic_error(e: &RunnelError) -> i16 {
    kafka_error(e, ResponseError::TopicAuthorizationFailed).code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_clients_act_on_keep_their_kafka_codes() {
        let e = |c| RunnelError::new(c, "x");
        assert_eq!(topic_error(&e(ErrorCode::NotLeader)), 6);
        assert_eq!(topic_error(&e(ErrorCode::UnknownTopic)), 3);
        assert_eq!(topic_error(&e(ErrorCode::OffsetOutOfRange)), 1);
        assert_eq!(topic_error(&e(ErrorCode::LeaderNotAvailable)), 5);
        assert_eq!(topic_error(&e(ErrorCode::OutOfOrderSequence)), 45);
        assert_eq!(topic_error(&e(ErrorCode::RecordTooLarge)), 10);
        assert_eq!(topic_error(&e(ErrorCode::CorruptBatch)), 2);
        assert_eq!(topic_error(&e(ErrorCode::AuthorizationFailed)), 29);
        assert_eq!(kafka_error(&e(ErrorCode::AuthorizationFailed), ResponseError::GroupAuthorizationFailed).code(), 30);
        assert_eq!(topic_error(&e(ErrorCode::NotCoordinator)), 16);
        assert_eq!(topic_error(&e(ErrorCode::RebalanceInProgress)), 27);
    }
}
