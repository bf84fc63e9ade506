//! HTTP routes, one file per resource; handlers are named by verb.

pub mod health;
pub mod messages;
mod pages;
pub mod presence;
pub mod rooms;
pub mod sessions;
pub mod thread_list;
pub mod threads;
pub mod users;
pub mod ws;

use actix_web::web;

/// Mount every route. Each path is one resource holding its methods, so a known path asked
/// with another method is a 405 with `Allow` (made JSON in `startup.rs`), not a 404.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/healthz").get(health::alive))
        .service(web::resource("/readyz").get(health::ready))
        .service(web::resource("/metrics").get(health::metrics))
        .service(web::resource("/ws").get(ws::upgrade))
        .service(
            web::scope("/api/v1")
                .service(
                    web::resource("/users")
                        .post(users::register)
                        .get(users::search),
                )
                .service(web::resource("/users/me").get(users::me))
                .service(web::resource("/presence").get(presence::get))
                .service(
                    web::resource("/sessions")
                        .post(sessions::login)
                        .delete(sessions::logout),
                )
                .service(
                    web::resource("/threads")
                        .post(threads::create)
                        .get(thread_list::list),
                )
                .service(web::resource("/threads/{id}").get(thread_list::show))
                .service(
                    web::resource("/threads/{id}/messages")
                        .get(threads::history)
                        .post(threads::send),
                )
                .service(web::resource("/threads/{id}/members").post(threads::add_members))
                .service(web::resource("/threads/{id}/members/me").delete(threads::leave))
                .service(web::resource("/threads/{id}/read").post(thread_list::mark_read))
                .service(web::resource("/rooms").get(rooms::list))
                // Before `/rooms/{id}/join`, which would take "random" for an id.
                .service(web::resource("/rooms/random/join").post(rooms::join_random))
                .service(web::resource("/rooms/{id}/join").post(rooms::join))
                .service(
                    web::resource("/messages/{id}")
                        .patch(messages::edit)
                        .delete(messages::delete),
                )
                .service(
                    web::resource("/messages/{id}/reactions/{emoji}")
                        .put(messages::react)
                        .delete(messages::unreact),
                )
                .service(web::resource("/messages/{id}/report").post(messages::report)),
        );
}
